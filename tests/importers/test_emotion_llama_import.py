"""``emollm import emotion-llama``: a checkpoint with Emotion-LLaMA's real key names at tiny sizes becomes a
run dir whose logits equal MiniGPT-v2's own composition of the same weights, built here by hand."""

# ruff: noqa: UP032  (MiniGPT-v2's own str.format calls, written as it writes them)
from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from emollm.errors import EmollmError
from emollm.importers.emotion_llama import REPORT_FILE, import_emotion_llama
from emollm.inference import run_config
from emollm.modeling.factory import load_run
from emollm.modeling.modeling_emollm import MEDIA_WEIGHTS_NAME
from emollm.prompts import emotion_llama_sample
from emollm.testing.emotion_llama import LORA_KEY as PEFT_KEY
from emollm.testing.emotion_llama import TINY, TINY_OVERRIDES, released_state, save_checkpoint
from emollm.testing.tiny import build_tiny_models

H, LAYERS, R, ALPHA = TINY["hidden"], TINY["layers"], TINY["r"], TINY["alpha"]
DV, GROUPS, DF = TINY["visual"], TINY["groups"], TINY["feature"]
INSTRUCTION = "Please determine which emotion label in the video represents: happy, sad, neutral."
TINY_SIZES = TINY_OVERRIDES


@pytest.fixture(scope="module")
def backbone():
    return str(build_tiny_models(names=["llama2"]).llama2)


def minigpt_v2_logits(backbone, state, media, sentence, answer):
    """MiniGPT-v2's forward, by hand: LoRA merged into q/v (scale alpha/r), ``encode_img`` (patches
    regrouped 4 -> 1 through llama_proj, the 3 features, the CLS last), ``prompt_wrap`` (each text
    segment tokenized alone; 256 -> here 4 image embeddings at <VideoHere>, the last 4 at <FeatureHere>),
    BOS in front, the answer + "</s>" after."""
    tok = AutoTokenizer.from_pretrained(backbone)
    llm = AutoModelForCausalLM.from_pretrained(backbone, dtype=torch.float32).eval()
    with torch.no_grad():
        for i in range(LAYERS):
            for m in ("q", "v"):
                a, b = (state[PEFT_KEY.format(i=i, m=m, ab=x, default="")] for x in "AB")
                getattr(llm.model.layers[i].self_attn, f"{m}_proj").weight += (b @ a) * (ALPHA / R)

        def lin(name, x):
            return x @ state[f"{name}.weight"].T + state[f"{name}.bias"]

        image = media["video"]
        cls = lin("cls_tk_llama_proj", image[:, :1])
        patches = lin("llama_proj", image[:, 1:].reshape(1, GROUPS, 4 * DV))
        feats = [lin(f"feats_llama_proj{k + 1}", media[n]) for k, n in enumerate(("face", "temporal", "audio"))]
        inputs_llama = torch.cat([patches, *feats, cls], dim=1)
        image_part, feature_part = inputs_llama[:, :-4], inputs_llama[:, -4:]

        text = "<video><VideoHere></video> <feature><FeatureHere></feature> {} [{}] {} ".format(
            "The person in video says: {}. ".format(sentence), "emotion", INSTRUCTION)
        video_segs = ("[INST] {} [/INST]".format(text)).split("<VideoHere>")
        feature_segs = video_segs[-1].split("<FeatureHere>")
        embed = llm.get_input_embeddings()

        def seg(s):
            return embed(torch.tensor([tok(s, add_special_tokens=False).input_ids]))

        bos = embed(torch.tensor([[tok.bos_token_id]]))
        embeds = torch.cat([bos, seg(video_segs[0]), image_part, seg(feature_segs[0]), feature_part,
                            seg(feature_segs[1]), seg(answer + "</s>")], dim=1)
        return llm(inputs_embeds=embeds).logits


@pytest.mark.parametrize("default", ["", ".default"])  # peft 0.2 (Emotion-LLaMA's) and later key names
def test_imported_run_logits_equal_minigpt_v2s_composition(tmp_path, backbone, default):
    state = released_state(default=default)
    ckpt = save_checkpoint(tmp_path / "Emotion_LLaMA.pth", state)
    out = tmp_path / "run"
    report = import_emotion_llama(ckpt, backbone, out, overrides=TINY_SIZES)
    assert len(report.mapped) == 10 + LAYERS * 4  # 5 projectors (weight, bias); A and B of q, v per layer
    assert report.lora == {"r": R, "alpha": ALPHA, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"],
                           "layers": LAYERS}

    model, processor = load_run(out)
    torch.manual_seed(1)
    media = {"video": torch.randn(1, 1 + 4 * GROUPS, DV), "face": torch.randn(1, 1, DF),
             "temporal": torch.randn(1, 1, DF), "audio": torch.randn(1, 1, DF)}
    sample = emotion_llama_sample("c1", "emotion", "I can't believe it", target="happy",
                                  modalities=processor.placeholders, pool=[INSTRUCTION])
    batch = processor.collate([processor.encode(sample)])
    with torch.no_grad():
        ours = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], media=media).logits
    expected = minigpt_v2_logits(backbone, released_state(default=""), media, "I can't believe it", "happy")
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-4)


def test_run_dir_is_what_the_other_commands_read(tmp_path, backbone):
    ckpt = save_checkpoint(tmp_path / "ckpt.pth", released_state())
    out = tmp_path / "run"
    import_emotion_llama(ckpt, backbone, out, overrides=TINY_SIZES, eva="/models/eva_vit_g")
    cfg = run_config(out)
    assert cfg.model.backbone.template == "emotion_llama"
    assert cfg.model.encoders["video"].name_or_path == "/models/eva_vit_g"
    assert cfg.model.encoders["video"].projector_options == {"regroup": 4, "cls_token": "separate",
                                                              "cls_position": "last"}
    assert {n: (e.modality, e.name_or_path) for n, e in cfg.model.encoders.items() if n != "video"} == {
        "face": ("precomputed", "emotion-llama/mae_340_UTT"), "temporal": ("precomputed", "emotion-llama/maeV_399_UTT"),
        "audio": ("precomputed", "emotion-llama/HL-UTT")}
    assert (cfg.train.lora.r, cfg.train.lora.alpha, cfg.train.lora.target_modules) == (R, ALPHA, ["q_proj", "v_proj"])
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["ignored"]["attention.fc_att.weight"].startswith("MiniGPT-v2's Attention head")
    assert sum("inv_freq" in k for k in report["ignored"]) == LAYERS
    assert set(report["mapped"]) | set(report["ignored"]) == set(released_state())  # every key accounted for


def test_alpha_comes_from_the_checkpoint_config(tmp_path, backbone):
    ckpt = save_checkpoint(tmp_path / "ckpt.pth", released_state(), alpha=32)
    assert import_emotion_llama(ckpt, backbone, tmp_path / "run", overrides=TINY_SIZES).lora["alpha"] == 32


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, backbone):
    ckpt = tmp_path / "evil.pth"
    torch.save({"model": released_state(), "hook": _Payload()}, ckpt)
    with pytest.raises(EmollmError, match="refused pickle global 'posix.system'"):
        import_emotion_llama(ckpt, backbone, tmp_path / "run", overrides=TINY_SIZES)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update({"llama_model.base_model.model.lm_head.weight": torch.zeros(2)}) or s, None),
    (lambda s: s.update({"some_new_head.weight": torch.zeros(2)}) or s, "no place in emollm: \\['some_new_head.weight'\\]"),
    (lambda s: {k: v for k, v in s.items() if k != "cls_tk_llama_proj.weight"}, "lacks \\['cls_tk_llama_proj.weight'\\]"),
    (lambda s: s.update({"feats_llama_proj2.weight": torch.zeros(H + 1, DF)}) or s, "projects to 65, the backbone's hidden size is 64"),
    (lambda s: {k: v for k, v in s.items() if "layers.1.self_attn.v_proj.lora_B" not in k},
     "1 LoRA weight\\(s\\) of the adapter have no value"),
])
def test_every_key_is_mapped_or_reported(tmp_path, backbone, change, message):
    ckpt = save_checkpoint(tmp_path / "ckpt.pth", change(released_state()))
    if message is None:  # frozen base weights are ignored, with the reason recorded
        report = import_emotion_llama(ckpt, backbone, tmp_path / "run", overrides=TINY_SIZES)
        assert report.ignored["llama_model.base_model.model.lm_head.weight"].startswith("frozen backbone weights")
        return
    with pytest.raises(EmollmError, match=message):
        import_emotion_llama(ckpt, backbone, tmp_path / "run", overrides=TINY_SIZES)
    assert not (tmp_path / "run").exists()


def test_an_existing_run_dir_is_kept_unless_overwrite(tmp_path, backbone):
    ckpt = save_checkpoint(tmp_path / "ckpt.pth", released_state())
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(EmollmError, match="exists and is not empty"):
        import_emotion_llama(ckpt, backbone, out, overrides=TINY_SIZES)
    import_emotion_llama(ckpt, backbone, out, overrides=TINY_SIZES, overwrite=True)
    assert not (out / "mine.txt").exists() and (out / REPORT_FILE).is_file()


def test_released_weights_are_stored_exactly_under_a_bf16_preset(tmp_path, backbone):
    """The preset runs the backbone in bf16; the imported media weights are still the checkpoint's bits."""
    from safetensors.torch import load_file

    state = released_state()
    ckpt = save_checkpoint(tmp_path / "ckpt.pth", state)
    out = tmp_path / "run"
    import_emotion_llama(ckpt, backbone, out, overrides=TINY_SIZES[:1])
    assert run_config(out).model.backbone.torch_dtype == "bfloat16"
    media = load_file(str(out / MEDIA_WEIGHTS_NAME))
    assert torch.equal(media["projector.projectors.video.cls_layer.proj.weight"], state["cls_tk_llama_proj.weight"])
    assert torch.equal(media["projector.projectors.audio.layer.proj.bias"], state["feats_llama_proj3.bias"])
