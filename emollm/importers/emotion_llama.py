"""Emotion-LLaMA's released checkpoint -> an emollm run dir (``emollm import emotion-llama``).

Emotion-LLaMA (MiniGPT-v2 code) saves only what it trained, as ``{"model": state_dict, ...}``:

=====================================================  ==================================================
checkpoint key                                         emollm
=====================================================  ==================================================
``llama_proj.{weight,bias}`` (H × 4·1408)              ``video`` projector, ``layer`` (regrouped patches)
``cls_tk_llama_proj.{weight,bias}`` (H × 1408)         ``video`` projector, ``cls_layer`` (``cls_position: last``)
``feats_llama_proj1/2/3.{weight,bias}`` (H × 1024)     ``face`` / ``temporal`` / ``audio`` projectors (the
                                                       order of ``cat(FaceMAE, VideoMAE, Audio)``)
``llama_model.base_model.model.model.layers.N.         the LoRA adapter on the backbone (r from the
self_attn.{q,v}_proj.lora_{A,B}[.default].weight``     shapes; alpha from the checkpoint's config, else 16)
``…rotary_emb.inv_freq``                               ignored: a buffer the backbone recomputes
``attention.*``                                        ignored: MiniGPT-v2's ``Attention`` head, built
                                                       but never called in its forward
``ln_vision.*``                                        checked to be the identity (the EVA encoder applies
                                                       MiniGPT-v2's parameter-free ln_vision)
``visual_encoder.*``                                   not imported here: ``emollm import eva-vit`` on the
                                                       same file converts them
other ``llama_model.*``                                ignored: frozen base weights; ``--backbone`` is used
=====================================================  ==================================================

Any other key is an error (nothing is dropped unnoticed). Shapes are checked against the backbone's
config and the preset's feature sizes. The file is loaded by :func:`emollm.safe_load.load_torch_file`
(a static pickle scan, then ``torch.load(weights_only=True)``): a checkpoint whose pickle names code
is refused, never executed.

The run dir gets the model (adapter + media weights), the processor (``emotion_llama`` template,
the preset's spans), ``config.yaml`` (so ``infer`` / ``predict`` / ``evaluate`` / ``train`` read it)
and ``import_report.json`` (every key and what became of it).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emollm.errors import ConfigError, EmollmError
from emollm.log import get_logger

log = get_logger(__name__)

PRESET = "emotion_llama_llama2"
REPORT_FILE = "import_report.json"
#: Emotion-LLaMA's feature projector i reads feature i of ``cat(FaceMAE, VideoMAE, Audio)``.
FEATURE_PROJECTORS = {"feats_llama_proj1": "face", "feats_llama_proj2": "temporal", "feats_llama_proj3": "audio"}
#: Where its pre-extracted features live (folders of ``<clip>.npy`` under its dataset root).
FEATURE_FOLDERS = {"face": "mae_340_UTT", "temporal": "maeV_399_UTT", "audio": "HL-UTT"}
_LORA = re.compile(r"^llama_model\.base_model\.model\.(model\.layers\.(\d+)\.[\w.]+?\.(\w+))\.(lora_[AB])"
                   r"(?:\.default)?\.weight$")
_IGNORED = [
    (re.compile(r"^llama_model\..*rotary_emb\.inv_freq$"), "rotary buffer, recomputed by the backbone"),
    (re.compile(r"^attention\."), "MiniGPT-v2's Attention head: built, never called in its forward"),
    (re.compile(r"^visual_encoder\."), "EVA-CLIP weights: convert them with `emollm import eva-vit` on this file"),
    (re.compile(r"^llama_model\.(?!.*lora_)"), "frozen backbone weights: the --backbone checkpoint is used"),
]


@dataclass
class ImportReport:
    checkpoint: str
    out: str
    mapped: dict[str, str] = field(default_factory=dict)  # checkpoint key -> emollm parameter
    ignored: dict[str, str] = field(default_factory=dict)  # checkpoint key -> why
    lora: dict[str, Any] = field(default_factory=dict)  # r, alpha, dropout, target modules, layers
    shapes: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        reasons: dict[str, int] = {}
        for why in self.ignored.values():
            reasons[why] = reasons.get(why, 0) + 1
        rows = [("checkpoint", self.checkpoint), ("run dir", self.out),
                ("keys mapped", f"{len(self.mapped)} (projectors {sum('lora' not in v for v in self.mapped.values())}, "
                                f"LoRA {sum('lora' in v for v in self.mapped.values())})"),
                ("LoRA", f"r={self.lora.get('r')} alpha={self.lora.get('alpha')} on {self.lora.get('target_modules')} "
                         f"of {self.lora.get('layers')} layers"),
                *((f"ignored ({n})", why) for why, n in reasons.items())]
        return "\n".join(f"{k:<16} {v}" for k, v in rows)

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "out": self.out, "mapped": self.mapped, "ignored": self.ignored,
                "lora": self.lora, "shapes": self.shapes}


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, MiniGPT config dict or {}) of a released checkpoint, loaded without running code."""
    from emollm.safe_load import load_torch_file

    data = load_torch_file(path)
    if not isinstance(data, Mapping):
        raise EmollmError(f"{path}: a checkpoint holds a dict, got {type(data).__name__}")
    state = data.get("model", data)
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EmollmError(f"{path}: no state dict of tensors (expected {{'model': {{name: tensor}}}})",
                          hint="give Emotion-LLaMA's released .pth (MiniGPT-v2 format)")
    config = data.get("config") if isinstance(data.get("config"), Mapping) else {}
    return dict(state), dict(config)


def lora_alpha_of(config: Mapping[str, Any], default: int = 16) -> int:
    """LoRA alpha from the checkpoint's saved MiniGPT config (``model.lora_alpha``), else Emotion-LLaMA's 16."""
    model = config.get("model") if isinstance(config.get("model"), Mapping) else {}
    alpha = model.get("lora_alpha")
    return int(alpha) if isinstance(alpha, int) and alpha > 0 else default


def classify(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, dict], dict[str, str]]:
    """(projector tensors by checkpoint key, LoRA tensors by emollm-relative name, ignored key -> why).
    An unknown key raises, naming it."""
    projectors, lora, ignored, unknown = {}, {}, {}, []
    proj_prefixes = ("llama_proj.", "cls_tk_llama_proj.", *(f"{p}." for p in FEATURE_PROJECTORS))
    for key, tensor in state.items():
        if key.startswith(proj_prefixes):
            projectors[key] = tensor
        elif m := _LORA.match(key):
            lora[f"base_model.model.{m.group(1)}.{m.group(4)}.default.weight"] = {
                "key": key, "tensor": tensor, "layer": int(m.group(2)), "module": m.group(3)}
        elif key.startswith("ln_vision."):
            ignored[key] = "ln_vision: identity, as the EVA encoder's (checked)"
            expected = torch.ones_like(tensor) if key.endswith("weight") else torch.zeros_like(tensor)
            if not torch.equal(tensor.float(), expected.float()):
                raise EmollmError(f"{key} is not the identity: this checkpoint trained ln_vision, which emollm's "
                                  "EVA encoder does not apply", hint="convert the EVA encoder with its ln_vision")
        else:
            why = next((why for pattern, why in _IGNORED if pattern.match(key)), None)
            if why is None:
                unknown.append(key)
            else:
                ignored[key] = why
    if unknown:
        raise EmollmError(f"{len(unknown)} key(s) of the checkpoint have no place in emollm: {unknown[:8]}",
                          hint="is this an Emotion-LLaMA / MiniGPT-v2 checkpoint? (docs/emotion_llama.md)")
    missing = [f"{p}weight" for p in proj_prefixes if f"{p}weight" not in projectors]
    if missing:
        raise EmollmError(f"the checkpoint lacks {missing}: not an Emotion-LLaMA checkpoint")
    return projectors, lora, ignored


def import_emotion_llama(
    checkpoint: str | Path,
    backbone: str,
    out: str | Path,
    *,
    preset: str = PRESET,
    eva: str | None = None,
    features: str = "emotion-llama",
    lora_alpha: int | None = None,
    lora_dropout: float = 0.05,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
) -> ImportReport:
    """Write the run dir ``out`` from Emotion-LLaMA's ``checkpoint`` on the LLaMA-2 ``backbone`` (path or hub id).

    ``features``: ``"emotion-llama"`` (face / temporal / audio read Emotion-LLaMA's own pre-extracted
    features, ``precomputed`` entries its projectors were trained on; import them with
    ``emollm import emotion-llama-features``) or ``"preset"`` (the preset's HF encoders, which run on
    raw clips but are not the encoders Emotion-LLaMA was trained with). ``eva``: the converted EVA-CLIP
    directory (``emollm import eva-vit``); default the preset's path. ``lora_alpha``: default the
    checkpoint's config, else 16 (Emotion-LLaMA's).
    """
    from emollm import config as cfglib
    from emollm.config import EncoderConfig
    from emollm.config.loader import validate_tree
    from emollm.modeling.factory import build_model_and_processor, save_run

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise EmollmError(f"{out} exists and is not empty", hint="choose another --out, or pass --overwrite")
    if features not in ("emotion-llama", "preset"):
        raise ConfigError(f"features must be 'emotion-llama' or 'preset', got {features!r}")
    state, ckpt_config = read_checkpoint(checkpoint)
    projectors, lora, ignored = classify(state)
    alpha, dropout = lora_alpha if lora_alpha is not None else lora_alpha_of(ckpt_config), lora_dropout

    cfg = cfglib.load(preset, [f"model.backbone.name_or_path={backbone}", *overrides])
    hidden_in = {name: tuple(projectors[f"{name}.weight"].shape) for name in
                 ("llama_proj", "cls_tk_llama_proj", *FEATURE_PROJECTORS)}
    visual_dim = hidden_in["cls_tk_llama_proj"][1]
    regroup, rest = divmod(hidden_in["llama_proj"][1], visual_dim)
    if rest or regroup < 1:
        raise EmollmError(f"llama_proj takes {hidden_in['llama_proj'][1]} inputs, not a multiple of the CLS "
                          f"projection's {visual_dim}: not Emotion-LLaMA's regrouped EVA patches")
    video = cfg.model.encoders["video"]
    video.feature_dim = visual_dim
    video.projector_options = {**video.projector_options, "regroup": regroup, "cls_token": "separate",
                               "cls_position": "last"}
    video.span_tail, video.span_tail_tokens = video.span_tail or "video_cls", 1
    if eva:
        video.name_or_path = str(eva)
    for proj, name in FEATURE_PROJECTORS.items():
        dim = hidden_in[proj][1]
        entry = cfg.model.encoders[name]
        if features == "emotion-llama":
            cfg.model.encoders[name] = EncoderConfig(
                modality="precomputed", name_or_path=f"emotion-llama/{FEATURE_FOLDERS[name]}",
                options={"folder": FEATURE_FOLDERS[name]}, feature_dim=dim, num_input_tokens=1,
                projector=entry.projector, projector_options=dict(entry.projector_options))
        elif entry.feature_dim != dim:
            raise EmollmError(f"{proj} takes {dim}-d features, the preset's {name} encoder gives {entry.feature_dim}")
    cfg.model.backbone.template = "emotion_llama"
    targets = sorted({v["module"] for v in lora.values()})
    layers = sorted({v["layer"] for v in lora.values()})
    ranks = {v["tensor"].shape[0] for n, v in lora.items() if n.endswith("lora_A.default.weight")}
    if not lora or len(ranks) != 1:
        raise EmollmError(f"the checkpoint's LoRA weights are missing or of mixed ranks ({sorted(ranks)})")
    lora_cfg = cfg.train.lora  # further training continues the same adapter shape
    lora_cfg.enabled, lora_cfg.r, lora_cfg.alpha, lora_cfg.dropout = True, ranks.pop(), alpha, dropout
    lora_cfg.target_modules = targets
    validate_tree(cfg)

    log.info("building the model on %s", backbone)
    model, processor = build_model_and_processor(cfg)
    text = model.config.text_config
    for key, shape in hidden_in.items():
        if shape[0] != text.hidden_size:
            raise EmollmError(f"{key} projects to {shape[0]}, the backbone's hidden size is {text.hidden_size}",
                              hint="give the backbone Emotion-LLaMA was trained on (LLaMA-2-7B-chat)")
    if layers[-1] >= text.num_hidden_layers:
        raise EmollmError(f"LoRA weights for layer {layers[-1]}, the backbone has {text.num_hidden_layers}")
    model.add_lora(r=cfg.train.lora.r, alpha=alpha, dropout=dropout, target_modules=targets)
    # The released weights are stored as they are (float32): a bf16 backbone would round the media
    # weights on save; loading casts them to the run's dtype (peft keeps LoRA weights float32 anyway).
    model.media.to(torch.float32)

    report = ImportReport(str(checkpoint), str(out), ignored=ignored,
                          lora={"r": cfg.train.lora.r, "alpha": alpha, "dropout": dropout,
                                "target_modules": targets, "layers": len(layers)},
                          shapes={k: list(v) for k, v in hidden_in.items()})
    media = dict(model.media.named_parameters())
    targets_media = {"llama_proj": "projector.projectors.video.layer.proj",
                     "cls_tk_llama_proj": "projector.projectors.video.cls_layer.proj",
                     **{p: f"projector.projectors.{n}.layer.proj" for p, n in FEATURE_PROJECTORS.items()}}
    filled = set()
    for key, tensor in projectors.items():
        prefix, _, leaf = key.rpartition(".")
        name = f"{targets_media[prefix]}.{leaf}"
        _copy(media, name, tensor, key)
        report.mapped[key] = f"media.{name}"
        filled.add(name)
    backbone_params = dict(model.language_model.named_parameters())
    ours = {n for n in backbone_params if "lora_" in n}
    for name, item in lora.items():
        _copy(backbone_params, name, item["tensor"], item["key"])
        report.mapped[item["key"]] = f"language_model.{name}"
    not_filled = sorted(ours - set(lora))
    if not_filled:
        raise EmollmError(f"{len(not_filled)} LoRA weight(s) of the adapter have no value in the checkpoint: "
                          f"{not_filled[:4]}")
    left = sorted(set(media) - filled)
    if left:
        raise EmollmError(f"media weight(s) without a value in the checkpoint: {left}")

    staging = out.with_name(out.name + ".tmp-import")
    shutil.rmtree(staging, ignore_errors=True)
    save_run(model, processor, staging)
    cfglib.save_resolved(cfg, staging, command=f"import emotion-llama {checkpoint}")
    (staging / REPORT_FILE).write_text(json.dumps(report.to_json(), indent=2), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return report


def _copy(params: Mapping[str, torch.nn.Parameter], name: str, tensor: torch.Tensor, key: str) -> None:
    target = params.get(name)
    if target is None:
        raise EmollmError(f"{key}: emollm's model has no parameter {name}")
    if tuple(target.shape) != tuple(tensor.shape):
        raise EmollmError(f"{key} has shape {tuple(tensor.shape)}, emollm's {name} is {tuple(target.shape)}",
                          hint="check the preset's feature sizes and the backbone")
    with torch.no_grad():
        target.copy_(tensor.to(target.dtype))
