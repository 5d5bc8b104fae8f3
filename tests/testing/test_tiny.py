"""The offline tiny-model fixtures: loadable by path like hub checkpoints, deterministic, built once."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from emollm.errors import FixtureError
from emollm.testing import tiny as tiny_mod
from emollm.testing.tiny import (
    ENCODER_NAMES,
    FIXTURE_VERSION,
    LLM_NAMES,
    MARKER,
    SPECS,
    TINY_MODEL_NAMES,
    TinySpec,
    build_tiny_models,
    default_cache_dir,
    file_hashes,
    is_complete,
    tiny_model_path,
)
from emollm.testing.tiny.corpus import corpus, sample_text

REPO = Path(__file__).resolve().parents[2]
CONVERSATION = [
    {"role": "user", "content": "How does the woman in the clip feel?"},
    {"role": "assistant", "content": "She looks happy: her cheeks are raised."},
]


@contextlib.contextmanager
def no_network():
    """Any socket connection fails loudly; the hub client is in offline mode (HF_HUB_OFFLINE=1).

    huggingface_hub reads HF_HUB_OFFLINE once, at import, so the constant is patched as well as the
    variable; nothing leaks into other test modules.
    """
    import huggingface_hub.constants as hf_constants

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(hf_constants, "HF_HUB_OFFLINE", True)
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        mp.setattr(socket, "create_connection", refuse)
        yield


@pytest.fixture(autouse=True)
def _offline():
    with no_network():
        yield


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-models")
    with no_network():
        start = time.perf_counter()
        models = build_tiny_models(root)
        print(f"\nbuilt {len(models)} tiny models in {time.perf_counter() - start:.2f} s")
    return models


def load_llm(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path)), AutoModelForCausalLM.from_pretrained(str(path))


def counting(spec: TinySpec, calls: list[str], fail: bool = False) -> TinySpec:
    """A copy of ``spec`` whose build is recorded in ``calls`` (and optionally fails half-way)."""

    def build(out: Path, seed: int) -> None:
        calls.append(spec.name)
        if fail:
            (out / "config.json").write_text("{}")
            raise RuntimeError("simulated crash half-way through the build")
        spec.build(out, seed)

    return TinySpec(spec.name, spec.kind, spec.hidden_size, spec.model_loader, spec.processor_loader, build)


# ---- LLMs -----------------------------------------------------------------------------------------------

EXPECTED_LLM = {
    # name: (model_type, vocab, kv heads, rope_theta, max positions)
    "llama2": ("llama", 1000, 4, 10000.0, 4096),
    "mistral": ("mistral", 800, 2, 1000000.0, 32768),
    "llama3": ("llama", 1016, 2, 500000.0, 8192),
}


@pytest.mark.parametrize("name", LLM_NAMES)
def test_llm_loads_by_path_and_generates(tiny, name):
    tok, model = load_llm(tiny[name])
    model_type, vocab, kv_heads, rope_theta, max_pos = EXPECTED_LLM[name]
    cfg = model.config
    assert cfg.model_type == model_type
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 2, 4)
    assert cfg.num_key_value_heads == kv_heads
    assert cfg.rope_parameters["rope_theta"] == rope_theta
    assert cfg.max_position_embeddings == max_pos >= 2048
    assert cfg.vocab_size == len(tok) == vocab
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (tok.bos_token_id, tok.eos_token_id, None)
    assert model.generation_config.bos_token_id == tok.bos_token_id
    assert not any(p.suffix in (".bin", ".pt", ".pth") for p in tiny[name].iterdir())  # safetensors only

    inputs = tok("The man looks angry because", return_tensors="pt")
    assert set(inputs) == {"input_ids", "attention_mask"}
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 4)
    assert torch.equal(out[0, : inputs["input_ids"].shape[1]], inputs["input_ids"][0])


@pytest.mark.parametrize("name", ["llama2", "mistral"])
def test_sentencepiece_tokenizers_match_the_real_special_tokens(tiny, name):
    import sentencepiece as spm

    tok, _ = load_llm(tiny[name])
    assert (tok.unk_token, tok.bos_token, tok.eos_token) == ("<unk>", "<s>", "</s>")
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.pad_token is None
    ids = tok(sample_text()).input_ids
    assert ids[0] == 1 and ids[-1] != 2  # BOS added, EOS not
    # tokenizer.model (as real checkpoints ship it) and tokenizer.json tokenize the same way
    sp = spm.SentencePieceProcessor(model_file=str(tiny[name] / "tokenizer.model"))
    assert sp.get_piece_size() == len(tok)
    assert sp.encode(sample_text()) == ids[1:]
    # (text starting with a space differs: sentencepiece adds a second "▁", transformers' Metaspace does not)
    lines = [*corpus()[::25], "Tabs\tand  double  spaces, ünïcödé and emoji 😀 too.", "x\ny"]
    assert [sp.encode(line) for line in lines] == tok(lines, add_special_tokens=False).input_ids
    assert sp.id_to_piece(0) == "<unk>" and sp.id_to_piece(1) == "<s>" and sp.id_to_piece(2) == "</s>"
    assert sp.id_to_piece(3) == "<0x00>"  # byte fallback pieces, as in LLaMA
    config = json.loads((tiny[name] / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "LlamaTokenizer" and config["padding_side"] == "right"
    assert tok.padding_side == "right"


LLAMA3_IDS = {  # base vocab 1000: the same offsets as 128000 + k in Meta-Llama-3
    "<|begin_of_text|>": 1000,
    "<|end_of_text|>": 1001,
    "<|reserved_special_token_0|>": 1002,
    "<|start_header_id|>": 1006,
    "<|end_header_id|>": 1007,
    "<|eot_id|>": 1009,
    "<|reserved_special_token_10|>": 1015,
}


def test_llama3_special_tokens_are_single_ids(tiny):
    tok, model = load_llm(tiny.llama3)
    for token, token_id in LLAMA3_IDS.items():
        assert tok.encode(token, add_special_tokens=False) == [token_id], token
        assert tok.convert_ids_to_tokens(token_id) == token
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|begin_of_text|>", "<|eot_id|>", None)
    assert tok("hello").input_ids[0] == 1000
    assert model.config.eos_token_id == 1009
    assert list(model.generation_config.eos_token_id) == [1001, 1009]
    text = "<|start_header_id|>user<|end_header_id|>"
    assert tok.encode(text, add_special_tokens=False)[0] == 1006


CHAT = {
    "llama2": "<s>[INST] How does the woman in the clip feel? [/INST] She looks happy: her cheeks are raised. </s>",
    "mistral": "<s>[INST] How does the woman in the clip feel? [/INST]She looks happy: her cheeks are raised.</s>",
    "llama3": (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHow does the woman in the clip feel?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nShe looks happy: her cheeks are raised.<|eot_id|>"
    ),
}


@pytest.mark.parametrize("name", LLM_NAMES)
def test_chat_template_is_the_real_one(tiny, name):
    tok, _ = load_llm(tiny[name])
    text = tok.apply_chat_template(CONVERSATION, tokenize=False)
    prefix = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>" if name == "llama3" else "<s>[INST]"
    assert text.startswith(prefix)
    assert text == CHAT[name]
    ids = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id  # BOS once, from the template
    assert ids[-1] == tok.eos_token_id


def test_llama2_template_takes_a_system_prompt(tiny):
    tok, _ = load_llm(tiny.llama2)
    text = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, *CONVERSATION], tokenize=False)
    assert text.startswith("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHow does")


@pytest.mark.parametrize("name", LLM_NAMES)
def test_english_round_trips(tiny, name):
    tok, _ = load_llm(tiny[name])
    for text in (sample_text(), 'Wow!! The 3 girls shouted "no" at 10:45 -- then laughed. [happy]'):
        ids = tok(text).input_ids
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert tok.unk_token_id is None or tok.unk_token_id not in ids
    # not a char-per-token tokenizer: it learned words from the corpus
    assert len(tok(sample_text(), add_special_tokens=False).input_ids) < len(sample_text()) / 2


# ---- encoders --------------------------------------------------------------------------------------------

EXPECTED_TOKENS = {  # sequence length of last_hidden_state for the inputs below
    "hubert": 49,
    "wav2vec2": 49,
    "whisper_encoder": 1500,
    "clip_vision": 17,
    "vit": 10,
    "vit_mae": 5,
    "videomae": 32,
    "bert": 14,  # [CLS] + 12 word pieces + [SEP]
}


def encoder_inputs(name: str, processor) -> dict:
    rng = np.random.default_rng(0)
    if SPECS[name].kind == "text":
        return dict(processor("The woman looks happy, 42 times!", return_tensors="pt"))
    if SPECS[name].kind == "audio":
        audio = rng.standard_normal(16000).astype(np.float32) * 0.1  # 1 s of 16 kHz noise
        return dict(processor(audio, sampling_rate=16000, return_tensors="pt"))
    if name == "videomae":
        frames = list(rng.integers(0, 256, (16, 40, 52, 3), dtype=np.uint8))
        return dict(processor(frames, return_tensors="pt"))
    image = rng.integers(0, 256, (3, 40, 52), dtype=np.uint8)  # CHW, not the model's size
    return dict(processor(images=image, return_tensors="pt"))


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_encoder_and_processor_load_by_path_and_run(tiny, name):
    import transformers
    from transformers import AutoModel

    spec = SPECS[name]
    processor = getattr(transformers, spec.processor_loader).from_pretrained(str(tiny[name]))
    model = AutoModel.from_pretrained(str(tiny[name])).eval()
    assert not any(p.suffix in (".bin", ".pt", ".pth") for p in tiny[name].iterdir())
    inputs = encoder_inputs(name, processor)
    with torch.no_grad():
        if name == "whisper_encoder":
            assert inputs["input_features"].shape == (1, 80, 3000)
            hidden = model.get_encoder()(inputs["input_features"]).last_hidden_state
        else:
            hidden = model(**inputs).last_hidden_state
    assert hidden.shape == (1, EXPECTED_TOKENS[name], spec.hidden_size)
    assert torch.isfinite(hidden).all()
    config_hidden = getattr(model.config, "hidden_size", None) or model.config.d_model
    assert config_hidden == spec.hidden_size


def test_image_processor_works_through_auto_processor(tiny):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(tiny.clip_vision))
    assert processor(images=np.zeros((3, 20, 30), np.uint8), return_tensors="pt")["pixel_values"].shape == (
        1,
        3,
        32,
        32,
    )


def test_vit_mae_keeps_every_patch_with_mask_ratio_zero(tiny):
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(str(tiny.vit_mae), mask_ratio=0.0).eval()
    pixels = AutoImageProcessor.from_pretrained(str(tiny.vit_mae))(
        images=np.zeros((3, 32, 32), np.uint8), return_tensors="pt"
    )["pixel_values"]
    with torch.no_grad():
        assert model(pixel_values=pixels).last_hidden_state.shape == (1, 1 + 16, SPECS["vit_mae"].hidden_size)


# ---- build mechanics -------------------------------------------------------------------------------------


def test_every_model_is_complete_with_hashes_in_its_marker(tiny):
    assert list(tiny) == list(TINY_MODEL_NAMES) and len(tiny) == 11
    for name, path in tiny.items():
        assert path == tiny.root / name and is_complete(path, name)
        marker = json.loads((path / MARKER).read_text())
        assert marker["fixture_version"] == FIXTURE_VERSION and marker["name"] == name
        assert marker["files"] == file_hashes(path)
        assert "model.safetensors" in marker["files"]
    assert not list(tiny.root.glob(".tmp-*"))


def test_rebuild_in_another_process_is_byte_identical(tiny, tmp_path):
    """Determinism: a second build (fresh process, other hash seed) gives the same files."""
    code = "import sys; from emollm.testing.tiny import build_tiny_models; build_tiny_models(sys.argv[1])"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, check=True, timeout=300)
    for name in TINY_MODEL_NAMES:
        assert file_hashes(tmp_path / name) == file_hashes(tiny[name]), name


def test_second_call_does_not_rebuild(tiny, monkeypatch):
    calls: list[str] = []
    for name in TINY_MODEL_NAMES:
        monkeypatch.setitem(SPECS, name, counting(SPECS[name], calls, fail=True))
    stamps = {name: (tiny[name] / "model.safetensors").stat().st_mtime_ns for name in tiny}
    again = build_tiny_models(tiny.root)
    assert calls == []
    assert dict(again) == dict(tiny)
    assert {name: (again[name] / "model.safetensors").stat().st_mtime_ns for name in again} == stamps
    assert tiny_model_path("llama3", tiny.root) == tiny.llama3


def test_half_built_directory_is_rebuilt(tiny, tmp_path):
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text('{"half": true}')  # no marker: an interrupted build
    (tmp_path / ".tmp-vit-leftover").mkdir()  # the temp dir of a killed build
    # a complete model of an older fixture version (different files) is not trusted either
    shutil.copytree(tiny.vit_mae, tmp_path / "vit_mae")
    (tmp_path / "vit_mae" / "config.json").write_text("{}")
    marker = json.loads((tmp_path / "vit_mae" / MARKER).read_text())
    (tmp_path / "vit_mae" / MARKER).write_text(json.dumps({**marker, "fixture_version": "v0"}))
    built = build_tiny_models(tmp_path, ["vit", "vit_mae"])
    for name in ("vit", "vit_mae"):
        assert is_complete(built[name], name)
        assert file_hashes(built[name]) == file_hashes(tiny[name])
    assert not (tmp_path / ".tmp-vit-leftover").exists()


def test_marker_listing_a_missing_file_is_incomplete(tiny, tmp_path):
    build_tiny_models(tmp_path, ["vit"])
    (tmp_path / "vit" / "model.safetensors").unlink()
    assert not is_complete(tmp_path / "vit", "vit")
    build_tiny_models(tmp_path, ["vit"])
    assert file_hashes(tmp_path / "vit") == file_hashes(tiny.vit)


def test_killed_build_leaves_no_directory_that_passes_as_complete(tiny, tmp_path):
    """A process killed half-way through a build (no cleanup runs) leaves only a temp dir behind."""
    code = (
        "import os, sys\n"
        "from emollm.testing import tiny\n"
        "spec = tiny.SPECS['vit']\n"
        "def build(out, seed):\n"
        "    spec.build(out, seed)\n"
        "    os._exit(3)  # killed after writing the model, before the marker\n"
        "tiny.SPECS['vit'] = tiny.TinySpec('vit', 'image', 36, 'AutoModel', 'AutoImageProcessor', build)\n"
        "tiny.build_tiny_models(sys.argv[1], ['vit'])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, timeout=120)
    assert proc.returncode == 3
    assert not (tmp_path / "vit").exists()
    assert len(list(tmp_path.glob(".tmp-vit-*"))) == 1
    built = build_tiny_models(tmp_path, ["vit"])
    assert file_hashes(built.vit) == file_hashes(tiny.vit)
    assert not list(tmp_path.glob(".tmp-vit-*"))


def test_failed_build_leaves_no_directory(monkeypatch, tmp_path):
    calls: list[str] = []
    monkeypatch.setitem(SPECS, "vit", counting(SPECS["vit"], calls, fail=True))
    with pytest.raises(FixtureError, match="simulated crash"):
        build_tiny_models(tmp_path, ["vit"])
    assert calls == ["vit"]
    assert not (tmp_path / "vit").exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_concurrent_callers_build_once(monkeypatch, tmp_path):
    calls: list[str] = []
    monkeypatch.setitem(SPECS, "vit", counting(SPECS["vit"], calls))
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker():
        try:
            results.append(build_tiny_models(tmp_path, ["vit"]).vit)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert calls == ["vit"]
    assert results == [tmp_path / "vit"] * 4
    assert is_complete(tmp_path / "vit", "vit")


def test_default_cache_dir_follows_emollm_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("EMOLLM_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "tiny-models" / FIXTURE_VERSION
    assert tiny_model_path("vit") == tmp_path / "tiny-models" / FIXTURE_VERSION / "vit"
    assert is_complete(tmp_path / "tiny-models" / FIXTURE_VERSION / "vit", "vit")


def test_unknown_names_and_attributes(tiny, tmp_path):
    with pytest.raises(FixtureError) as info:
        build_tiny_models(tmp_path, ["llama4"])
    assert "llama4" in str(info.value) and "llama3" in info.value.hint
    some = build_tiny_models(tiny.root, "vit")  # one name as a plain string
    assert list(some) == ["vit"] and some.vit == tiny.vit
    with pytest.raises(AttributeError, match="llama2"):
        _ = some.llama2
    with pytest.raises(KeyError):
        _ = some["llama2"]
    assert "vit" in dir(some) and "vit" in repr(some)


def test_unwritable_cache_dir_is_a_fixture_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(FixtureError, match="cache directory") as info:
        build_tiny_models(blocker / "tiny", ["vit"])
    assert "EMOLLM_CACHE" in info.value.hint


def test_build_leaves_the_callers_state_alone(tmp_path):
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    previous = torch.get_default_dtype()
    build_tiny_models(tmp_path, ["vit"])
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_default_dtype() == previous
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == (verbosity, bars)


def test_module_imports_without_transformers():
    """Importing the fixtures (e.g. for tiny_model_path in a CLI) must not pull in torch / transformers."""
    code = "import sys, emollm.testing.tiny; print('transformers' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ).stdout
    assert out.split() == ["False", "False"]
    assert tiny_mod.__name__ == "emollm.testing.tiny"
