"""Builder visual describer: OpenAI-compatible vision requests (local scripted server), cache, flags, hf."""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from collections.abc import Iterator

import numpy as np
import pytest

from data_builders.describers import make_describer, validate_description
from data_builders.runner import build
from emollm import config
from emollm.errors import ConfigError, WriterError
from emollm.testing.chat_server import ScriptedChatServer

TIMEOUT_S = 0.3
GOOD = "A young woman with raised brows, looking straight at the camera, her head tilted slightly left."


class VisionServer(ScriptedChatServer):
    """Scripted by the image's top-left pixel: red -> good; green -> garbage first; blue -> always
    garbage; white -> first call sleeps past the timeout; black -> always empty. ``mode`` overrides the
    pixel for whole builds ("ok", "bad", "timeout": every call sleeps past the timeout)."""

    COLOURS = {(255, 0, 0): "red", (0, 255, 0): "green", (0, 0, 255): "blue", (255, 255, 255): "white",
               (0, 0, 0): "black"}

    def __init__(self) -> None:
        super().__init__()
        self.mode: str | None = None
        self.requests: list[dict] = []

    def respond(self, body, headers):  # noqa: ANN001, ANN201
        from PIL import Image

        user = body["messages"][-1]["content"]
        url = next(p["image_url"]["url"] for p in user if p["type"] == "image_url")
        assert url.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
        marker = self.mode or self.COLOURS.get(tuple(int(v) for v in img.getpixel((0, 0))), "other")
        with self.lock:
            self.calls[marker] += 1
            n = self.calls[marker]
            self.requests.append(body)
        if (marker == "white" and n == 1) or marker == "timeout":
            time.sleep(1.0)
        if marker in ("blue", "bad") or (marker == "green" and n == 1):
            return "{}" if n % 2 else "?? ##"
        if marker == "black":
            return ""
        return GOOD


@pytest.fixture()
def server() -> Iterator[VisionServer]:
    with VisionServer().running() as srv:
        yield srv


def _cfg(server: VisionServer, *extra: str):
    return config.load(None, ["build.describer.backend=openai", "build.describer.model=scripted-vlm",
                              f"build.describer.base_url={server.url}", "build.describer.api_key_env=TEST_VLM_KEY",
                              f"build.describer.timeout_s={TIMEOUT_S}", "build.describer.backoff_s=0.01", *extra])


def _image(rgb: tuple[int, int, int]) -> np.ndarray:
    im = np.zeros((40, 30, 3), np.uint8)
    im[:] = rgb
    im[20:, 10:] = (128, 64, 32)  # not uniform, the top-left pixel keeps its colour
    return im


def test_validate_description() -> None:
    assert validate_description("") is None and validate_description("{}") is None
    assert validate_description("?? ##") is None and validate_description('{"a": 1}') is None
    assert validate_description("This person in the video is a man looking down.") == "a man looking down"
    assert validate_description("<think>x</think> A woman smiling, head tilted.") == "a woman smiling, head tilted"


def test_openai_describer_vision_request_retries_flags_and_cache(server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TEST_VLM_KEY", "sk-test")
    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255), "black": (0, 0, 0)}
    images = [_image(c) for c in colours.values()]
    d = make_describer(_cfg(server).build.describer, tmp_path)
    res = dict(zip(colours, d.describe(images), strict=True))
    assert res["red"].text == GOOD.rstrip(".")[0].lower() + GOOD.rstrip(".")[1:]
    assert res["green"].text and res["white"].text  # garbage / timeout once, then a good reply
    assert res["blue"].text is None and "no valid answer" in res["blue"].error
    assert res["black"].text is None
    assert server.calls["red"] == 1 and server.calls["green"] == 2 and server.calls["white"] == 2
    assert server.calls["blue"] == 3 and server.calls["black"] == 3
    req = server.requests[0]
    assert req["model"] == "scripted-vlm" and req["messages"][0]["role"] == "system"
    parts = req["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url"] and "Do not guess emotions" in parts[0]["text"]
    assert d.stats.transport_errors >= 1
    before = server.total()
    again = make_describer(_cfg(server).build.describer, tmp_path).describe(images)
    assert server.total() == before and all(r.cached for r in again)  # second run: no calls (bad ones cached invalid)
    assert [r.text for r in again] == [res[c].text for c in colours]


def test_describer_config_and_errors(tmp_path, monkeypatch) -> None:
    assert make_describer(config.load(None, []).build.describer, tmp_path) is None  # default: none
    monkeypatch.delenv("NO_SUCH_VLM_KEY", raising=False)
    cfg = config.load(None, ["build.describer.backend=openai", "build.describer.model=m",
                             "build.describer.api_key_env=NO_SUCH_VLM_KEY"])
    with pytest.raises(WriterError, match="NO_SUCH_VLM_KEY"):
        make_describer(cfg.build.describer, tmp_path)
    with pytest.raises(ConfigError, match="model"):
        config.load(None, ["build.describer.backend=hf"])
    with pytest.raises(WriterError, match="does not exist"):
        make_describer(config.load(None, ["build.describer.backend=hf",
                                          f"build.describer.model={tmp_path / 'nope'}"]).build.describer, tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WriterError, match="cannot be loaded"):
        make_describer(config.load(None, ["build.describer.backend=hf",
                                          f"build.describer.model={tmp_path / 'empty'}"]).build.describer, tmp_path)


def _records(out) -> dict[str, dict]:
    return {json.loads(line)["id"]: json.loads(line) for line in (out / "annotations.jsonl").open(encoding="utf-8")}


def test_build_with_describer_second_run_makes_no_calls(server, sample_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TEST_VLM_KEY", "sk-test")
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(sample_dir / "single_face.mp4", clips / "a.mp4")
    out = tmp_path / "ds"
    base = ["build.au_fps=1", "build.tone=none", "build.writer.backend=template"]
    s0 = build(config.load(None, base), clips, out)  # no describer: null, no clause
    rec = _records(out)["a"]
    assert rec["visual_description"] is None and "This person in the video is" not in (rec["coarse_description"] or "")
    assert "describer_failed" not in rec["flags"] and s0.text.get("describer_stats") is None

    server.mode = "ok"
    over = base + ["build.describer.backend=openai", "build.describer.model=scripted-vlm",
                   f"build.describer.base_url={server.url}", "build.describer.api_key_env=TEST_VLM_KEY",
                   f"build.describer.timeout_s={TIMEOUT_S}", "build.describer.backoff_s=0.01"]
    s1 = build(config.load(None, over), clips, out)
    assert s1.reused == 1  # a describer config change recomputes no clip
    rec = _records(out)["a"]
    assert rec["visual_description"].startswith("a young woman with raised brows")
    assert rec["coarse_description"].startswith("This person in the video is a young woman with raised brows")
    prov = rec["provenance"]["visual_description"]
    assert prov["source"] == "describer:openai" and prov["model"] == "scripted-vlm"
    assert prov["version"].startswith("visual_description/1+") and prov["frame"] == rec["peak_frame"]["index"]
    assert s1.text["describer_stats"]["calls"] == 1 and server.total() == 1
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["text"]["visual_descriptions"] == 1 and manifest["text"]["describer_failed"] == 0

    s2 = build(config.load(None, over), clips, out)
    assert server.total() == 1 and s2.text["describer_stats"]["cache_hits"] == 1 and s2.reused == 1

    for mode in ("bad", "timeout"):  # garbage / timeout every time: absent + flagged, never invented
        server.mode = mode
        out_bad = tmp_path / f"ds_{mode}"
        s = build(config.load(None, over + ["build.describer.max_retries=1"]), clips, out_bad)
        rec = _records(out_bad)["a"]
        assert s.failed == 0 and rec["visual_description"] is None and "describer_failed" in rec["flags"]
        assert rec["describer_error"] and "visual_description" not in rec["provenance"]
        assert "This person in the video is" not in (rec["coarse_description"] or "")
        assert rec["coarse_description"]  # the other cues still make a description; the run goes on


def _tiny_llava(path) -> None:
    """A random-initialised tiny LLaVA (CLIP vision tower + the tiny llama2 text model), saved by path."""
    import torch
    from transformers import (
        AutoConfig,
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from emollm.testing.tiny import build_tiny_models

    src = build_tiny_models(names=["llama2"]).llama2
    tok = AutoTokenizer.from_pretrained(src)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    template = ("{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}{% else %}"
                "{% for p in m['content'] %}{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}{% endif %}"
                "{% endfor %}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                  crop_size={"height": 32, "width": 32}),
                               tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=template)
    cfg = LlavaConfig(vision_config=vision, text_config=AutoConfig.from_pretrained(src),
                      image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
                      vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(path)
    processor.save_pretrained(path)


def test_hf_describer_local_tiny_llava(tmp_path) -> None:
    path = tmp_path / "tiny_llava"
    _tiny_llava(path)
    cfg = config.load(None, ["build.describer.backend=hf", f"build.describer.model={path}",
                             "build.describer.max_new_tokens=8", "build.describer.max_retries=0",
                             "build.describer.image_max_side=64"])  # fmt: skip
    d = make_describer(cfg.build.describer, tmp_path)
    first = d.describe([_image((255, 0, 0))])[0]
    assert d.kind == "hf" and d.model == str(path) and d.stats.calls == 1
    assert first.text is not None or "no valid answer" in first.error  # a random VLM: garbage is flagged, not used
    again = make_describer(cfg.build.describer, tmp_path)
    assert again.describe([_image((255, 0, 0))])[0].text == first.text
    assert again.stats.calls == 0 and again.stats.cache_hits == 1
