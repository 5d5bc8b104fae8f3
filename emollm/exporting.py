"""``emollm export --model``: a run dir -> one self-contained, movable HF-format model directory.

A run dir (:func:`emollm.modeling.factory.save_run`) points outside itself: a LoRA run names its base
model by path or hub id, and every modality names its frozen encoder the same way. The export copies
all of it into one directory that ``EmoLLMForConditionalGeneration.from_pretrained`` (or ``load_run``,
or ``AutoModelForCausalLM`` after ``import emollm.modeling``) loads with no other path::

    OUT/
      config.json                 EmoLLMConfig; paths to its own copies are relative (resolved at load)
      model*.safetensors          --merge (LoRA merged into the backbone) or a full fine-tune: the whole
                                  model, sharded by save_pretrained
      adapter/ + media_modules.safetensors + backbone/
                                  without --merge: the unmerged adapter, the media modules, the base model
      encoders/<name>/            the frozen encoders (not with --no-encoders: cached features only)
      tokenizer* + emollm_processor.json   the processor; the chat template travels with it
      README.md                   model card: base model, modalities, template, data, config, metrics
      emollm_export.json          provenance: emollm version, kind, base model, source run
      config.yaml                 the run's resolved emollm config (when the run dir has one), its model
                                  paths naming the copies above: `emollm infer` / `predict` and
                                  `emollm.load` take the export as they take the run dir

A QLoRA run (4-bit / 8-bit backbone) exports unmerged only: its adapter was trained against the
quantised weights, so ``--merge`` is refused; the export's config.json quantises the copied base again
when it is loaded.

The directory is built under ``OUT.tmp-*`` beside ``OUT`` and renamed into place at the end, so a
killed export never leaves a half directory under the final name.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emollm.config.schema import IMPORTED_KINDS
from emollm.dataset.io import read_jsonl
from emollm.errors import EmollmError
from emollm.log import get_logger
from emollm.modeling.modeling_emollm import ADAPTER_DIR, MEDIA_WEIGHTS_NAME
from emollm.paths import check_new_output
from emollm.processing import PROCESSOR_CONFIG
from emollm.version import __version__

log = get_logger(__name__)

BACKBONE_DIR = "backbone"
ENCODERS_DIR = "encoders"
EXPORT_INFO = "emollm_export.json"
#: The run's resolved config, as in a run dir (emollm.config.RESOLVED_CONFIG_NAME).
RUN_CONFIG = "config.yaml"
RUN_INFO = "emollm_run.json"
#: The hub's customary shard size; save_pretrained's own default (50GB) makes one file of a 7B model.
DEFAULT_MAX_SHARD_SIZE = "5GB"
#: Written last into emollm's tiny test models (emollm.testing.tiny.MARKER): a base holding it is a toy.
TINY_FIXTURE_MARKER = "emollm-fixture.json"

# Weights in formats transformers' PyTorch classes never read: left out of the copies.
_FOREIGN_WEIGHTS = (".h5", ".msgpack", ".ckpt", ".gguf", ".onnx", ".ot", ".tflite")
# PyTorch pickles, copied only when the checkpoint has no safetensors (duplicates otherwise).
_PICKLE_WEIGHTS = (".bin", ".pt", ".pth")
_EXPORT_KINDS = {"lora": "LoRA adapter (unmerged) + base model", "merged": "LoRA merged into the backbone",
                 "full": "full fine-tune"}


@dataclass
class RunDir:
    """A checked run dir: what kind of weights it holds and its ``config.json``."""

    path: Path
    kind: str  # "lora" | "full"
    config: dict[str, Any]


# ------------------------------------------------------------------------------------------ checks
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EmollmError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def _missing(run: Path, what: str, description: str) -> EmollmError:
    return EmollmError(f"run dir {run} lacks {what} ({description})",
                       hint="the run did not finish saving: export a run whose final save completed")


def inspect_run(run_dir: str | os.PathLike) -> RunDir:
    """Check that ``run_dir`` holds a whole emollm run (config, weights, processor); say what is missing."""
    path = Path(run_dir)
    hint = "give the folder `emollm train` wrote (run.output_dir) or one written by save_run"
    if not path.is_dir():
        raise EmollmError(f"{path} is not an emollm run dir (no such folder)", hint=hint)
    if not (path / "config.json").is_file():
        raise EmollmError(f"{path} is not an emollm run dir (no config.json)", hint=hint)
    config = _read_json(path / "config.json")
    if not isinstance(config, dict) or config.get("model_type") != "emollm":
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise EmollmError(f"{path} is not an emollm run dir (config.json has model_type {kind!r})", hint=hint)
    run_info = _read_json(path / RUN_INFO) if (path / RUN_INFO).is_file() else {}
    if run_info.get("kind") == "lora" or (path / ADAPTER_DIR).exists():
        if not (path / ADAPTER_DIR / "adapter_config.json").is_file():
            raise _missing(path, f"{ADAPTER_DIR}/adapter_config.json", "the LoRA adapter")
        if not any((path / ADAPTER_DIR / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
            raise _missing(path, f"{ADAPTER_DIR}/adapter_model.safetensors", "the LoRA adapter weights")
        if not (path / MEDIA_WEIGHTS_NAME).is_file():
            raise _missing(path, MEDIA_WEIGHTS_NAME, "the projector / AU encoder / fusion weights")
        kind = "lora"
    else:
        index = path / "model.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            for shard in shards:
                if not (path / shard).is_file():
                    raise _missing(path, shard, "a weight shard named in model.safetensors.index.json")
        elif not (path / "model.safetensors").is_file():
            raise EmollmError(f"run dir {path} holds neither {ADAPTER_DIR}/ (a LoRA run) nor model.safetensors "
                              "(a full fine-tune)", hint="the run did not finish saving, or this is not a run dir")
        kind = "full"
    for name, description in ((PROCESSOR_CONFIG, "the processor: template, spans, media tokens"),
                              ("tokenizer_config.json", "the tokenizer")):
        if not (path / name).is_file():
            raise _missing(path, name, description)
    return RunDir(path, kind, config)


def locate_checkpoint(name_or_path: str | None, relative_to: Path, revision: str | None = None) -> Path | None:
    """The local folder of a checkpoint named as the config names it, or None when it is nowhere here.

    A relative path is tried against ``relative_to`` (as the loader resolves it) and then the working
    directory; a hub id is looked up in the HF cache only (no download).
    """
    if not name_or_path:
        return None
    for candidate in (relative_to / name_or_path, Path(name_or_path).expanduser()):
        if candidate.is_dir():
            return candidate.resolve()
    if os.path.isabs(name_or_path) or name_or_path.startswith(("~", "./", "../")):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, revision=revision, local_files_only=True))
    except (OSError, ValueError):  # not cached, or not a valid hub id
        return None


def public_name(name_or_path: str | None) -> str | None:
    """What to call a checkpoint in a shared card: a hub id as is, a local folder by its name only."""
    if not name_or_path:
        return None
    looks_local = os.path.isabs(name_or_path) or name_or_path.startswith(("~", "./", "../")) or Path(name_or_path).exists()
    return Path(name_or_path).expanduser().name if looks_local else name_or_path


def _is_hub_id(name_or_path: str | None) -> bool:
    return bool(name_or_path) and public_name(name_or_path) == name_or_path


# ------------------------------------------------------------------------------------------ copies
def copy_checkpoint(src: Path, dst: Path) -> None:
    """Copy what transformers loads from a checkpoint folder.

    Top-level files only (hub repos also hold e.g. ``original/`` consolidated weights), hidden files
    left out, TF / Flax / ONNX / GGUF weights left out, and PyTorch pickles left out when safetensors
    are there. Hub snapshots are symlinks into ``blobs/``: the files are copied, never the links.
    """
    files = [p for p in sorted(src.iterdir()) if p.is_file() and not p.name.startswith(".")]
    has_safetensors = any(p.name.endswith(".safetensors") for p in files)
    dst.mkdir(parents=True, exist_ok=True)
    for p in files:
        if p.name.endswith(_FOREIGN_WEIGHTS) or (has_safetensors and p.name.endswith(_PICKLE_WEIGHTS)):
            continue
        shutil.copyfile(p, dst / p.name)  # follows symlinks


def _portable_config(out: Path, backbone: str | None, encoders: dict[str, str | None]) -> None:
    """Rewrite ``out/config.json`` so it names no path outside ``out``.

    ``backbone``: ``backbone`` (the copy beside it) or None (the weights are in this directory);
    ``encoders``: modality -> ``encoders/<name>``, a hub id, or None (cached features only).
    """
    path = out / "config.json"
    config = _read_json(path)
    config["backbone_name_or_path"] = backbone
    config.pop("_name_or_path", None)
    if isinstance(config.get("text_config"), dict):
        config["text_config"].pop("_name_or_path", None)  # where the run's base model lay
    for name, spec in (config.get("modalities") or {}).items():
        if isinstance(spec.get("encoder"), dict) and name in encoders:
            spec["encoder"]["name_or_path"] = encoders[name]
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_run_config(run: Path, out: Path, backbone: str, encoders: dict[str, str]) -> str | None:
    """The run's resolved config as ``out/config.yaml``, its model paths naming the export's copies.

    ``backbone`` / ``encoders`` (modality -> path or name) are written relative to ``out``;
    :func:`emollm.inference.run_config` resolves them against wherever the directory lies, so the
    export loads for ``emollm infer`` / ``predict`` / ``emollm.load`` exactly as the run dir does. Data
    paths (dataset, feature cache) stay those of the training machine: override them on the command
    line. A config this emollm no longer reads is copied as it is; the note returned says so.
    """
    from emollm import config as cfglib
    from emollm.errors import ConfigError

    source = run / RUN_CONFIG
    try:
        cfg = cfglib.load(source)
    except ConfigError as exc:
        shutil.copyfile(source, out / RUN_CONFIG)
        return (f"`{RUN_CONFIG}` was copied unchanged: it does not load with emollm {__version__} ({exc.message}); "
                "`emollm infer` / `predict` need a run config that loads.")
    cfg.model.backbone.name_or_path = backbone
    for name, value in encoders.items():
        if name in cfg.model.encoders:
            cfg.model.encoders[name].name_or_path = value
    cfglib.save_resolved(cfg, out, command="export")
    return None


def _copy_unmerged(run: RunDir, out: Path, base_dir: Path, base_label: str | None) -> None:
    shutil.copytree(run.path / ADAPTER_DIR, out / ADAPTER_DIR, ignore=shutil.ignore_patterns(".*", "README.md"))
    adapter_config = out / ADAPTER_DIR / "adapter_config.json"
    data = _read_json(adapter_config)
    data["base_model_name_or_path"] = base_label  # peft records the absolute base path here
    adapter_config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for name in (MEDIA_WEIGHTS_NAME, RUN_INFO, "config.json"):
        shutil.copyfile(run.path / name, out / name)
    copy_checkpoint(base_dir, out / BACKBONE_DIR)


def _write_merged(run: RunDir, out: Path, max_shard_size: str | int) -> None:
    from emollm.modeling.modeling_emollm import EmoLLMForConditionalGeneration

    model = EmoLLMForConditionalGeneration.from_pretrained(run.path)
    model.language_model = model.language_model.merge_and_unload()  # W + B·A·scale, adapter gone
    model.save_pretrained(out, max_shard_size=max_shard_size)


def _copy_full(run: RunDir, out: Path) -> None:
    index = run.path / "model.safetensors.index.json"
    names = ["config.json", "generation_config.json"]
    names += [index.name, *sorted(set(_read_json(index)["weight_map"].values()))] if index.is_file() else ["model.safetensors"]
    for name in names:
        if (run.path / name).is_file():
            shutil.copyfile(run.path / name, out / name)


# ------------------------------------------------------------------------------------------ model card
def _read_training_config(run: Path) -> dict[str, Any]:
    path = run / RUN_CONFIG
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise EmollmError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return data if isinstance(data, dict) else {}


def _train_log(run: Path) -> list[dict[str, Any]]:
    path = run / "logs" / "train_log.jsonl"
    if not path.is_file():
        return []
    return read_jsonl(path, skip_bad=True)  # a line cut by a killed run: the others still tell the story


def _split_counts(dataset_dir: str | None) -> dict[str, int] | None:
    """Clips per split of the training dataset, when it is reachable from here."""
    if not dataset_dir or not (Path(dataset_dir) / "annotations.jsonl").is_file():
        return None
    counts: Counter[str] = Counter()
    with open(Path(dataset_dir) / "annotations.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    counts[str(json.loads(line).get("split"))] += 1
                except (json.JSONDecodeError, AttributeError):
                    counts["unreadable"] += 1
    return dict(sorted(counts.items()))


def find_metrics(run: Path, given: str | os.PathLike | None) -> tuple[dict[str, Any] | None, str | None]:
    """The emollm evaluate ``metrics.json`` to put in the card: ``given``, else one in the run dir or a
    folder directly under it. Returns (metrics, where it came from) or (None, None)."""
    from eval.io import load_metrics

    if given is not None:
        return load_metrics(given), Path(given).name
    for candidate in [run / "metrics.json", *sorted(run.glob("*/metrics.json"))]:
        if candidate.is_file():
            try:
                return load_metrics(candidate), str(candidate.relative_to(run))
            except EmollmError:  # some other metrics.json (not an emollm evaluate one): not ours to show
                continue
    return None, None


def _metric_rows(m: dict[str, Any]) -> list[tuple[str, str]]:
    names = {"war": "WAR (accuracy) %", "uar": "UAR %", "waf": "WAF (weighted F1) %", "macro_f1": "macro F1 %"}
    rows: list[tuple[str, str]] = []
    classification = m.get("classification") or {}
    summary = (m.get("folds") or {}).get("summary")
    for key, label in names.items():
        if summary and key in summary:
            rows.append((label, f"{100 * summary[key]['mean']:.2f} ± {100 * summary[key]['std']:.2f}"))
        elif classification.get(key) is not None:
            rows.append((label, f"{100 * classification[key]:.2f}"))
    if classification.get("n") is not None:
        rows.append(("samples scored", str(classification["n"])))
    parsing = m.get("parsing") or {}
    if parsing.get("invalid_rate") is not None:
        rows.append(("invalid answers %", f"{100 * parsing['invalid_rate']:.2f}"))
    emer = (m.get("reasoning") or {}).get("emer") or {}
    for key in ("clue_overlap", "label_overlap"):
        if (emer.get(key) or {}).get("mean") is not None:
            rows.append((f"EMER {key.replace('_', ' ')} (1-10)", f"{emer[key]['mean']:.2f}"))
    return rows


def _describe_quantization(settings: dict[str, Any]) -> str:
    from emollm.modeling.quantization import describe

    return f"QLoRA, backbone {describe(settings)} (bitsandbytes)"


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(str(c) for c in row) + " |" for row in rows]]


def _pipeline_tag(kinds: set[str]) -> str:
    seen = {"audio" if k == "audio" else "video" for k in kinds if k != "au"}
    if not seen:
        return "text-generation"
    if seen == {"video"}:
        return "video-text-to-text"
    if seen == {"audio"}:
        return "audio-text-to-text"
    return "any-to-any"


def _example_prompt(processor: Any) -> str:
    """The rendered prompt of one emotion sample, runs of media tokens shown as ``<|emo_x|>×N``."""
    from emollm.prompts import emotion_llama_sample

    sample = emotion_llama_sample("example", "emotion", "I can't believe it", modalities=tuple(processor.spans))
    text = processor.render(sample)
    return re.sub(r"(<\|emo_\w+\|>)\1+", lambda m: f"{m.group(1)}×{len(m.group(0)) // len(m.group(1))}", text)


def _model_card(*, out_name: str, kind: str, run: RunDir, base: str | None, base_is_local: bool, tiny: bool,
                processor: Any, encoders: dict[str, dict[str, Any]], training: dict[str, Any],
                train_log: list[dict[str, Any]], metrics: dict[str, Any] | None, metrics_source: str | None, notes: list[str]) -> str:
    config = run.config
    modalities = config.get("modalities") or {}
    template = processor.template
    tags = ["emollm", "emotion-recognition", "multimodal", *(["lora"] if run.kind == "lora" else []),
            *(["tiny-test-model"] if tiny else [])]
    front = ["---", "library_name: emollm"]
    if base:
        comment = "  # a local checkpoint's folder name: set the hub id before publishing" if base_is_local else ""
        front.append(f"base_model: {json.dumps(base)}{comment}")
        front.append(f"base_model_relation: {'adapter' if kind == 'lora' else 'finetune'}")
    front += ["tags:", *[f"- {t}" for t in tags], f"pipeline_tag: {_pipeline_tag({s['kind'] for s in modalities.values()})}", "---", ""]

    lines = [f"# {out_name}", "",
             f"A multimodal emotion LLM in the Emotion-LLaMA style, exported by emollm {__version__} from the run "
             f"`{run.path.name}` ({_EXPORT_KINDS[kind]}). Frozen encoders turn a clip's frames, face crops and audio "
             "into features; per-modality projectors write them into the LLM's input embeddings at the media "
             "tokens; the LLM answers with an emotion label and its reasoning.", ""]
    lines += ["## Base model", "", f"`{base or 'unknown'}`" + (" (local checkpoint)" if base_is_local else "") + ", "
              f"{config.get('text_config', {}).get('model_type', '?')} architecture, hidden size "
              f"{config.get('text_config', {}).get('hidden_size', '?')}, "
              f"{config.get('text_config', {}).get('num_hidden_layers', '?')} layers.", ""]
    if kind == "lora":
        lines += ["The LoRA adapter is **not merged**: `adapter/` holds it and `backbone/` a copy of the base model.", ""]
    elif kind == "merged":
        lines += ["The LoRA adapter is **merged** into the backbone weights (one full model).", ""]

    spans = processor.spans
    rows = []
    # the processor's (prompt) order, not config.json's sorted one
    for name in [*(n for n in spans if n in modalities), *(n for n in modalities if n not in spans)]:
        spec = modalities[name]
        encoder = encoders.get(name) or {}
        if spec["kind"] == "au":
            source = "learned AU encoder (trained with the model)"
        elif encoder.get("included"):
            source = f"`{encoder['path']}` (copy of `{encoder['source']}`)"
        elif encoder.get("path"):
            source = f"`{encoder['path']}` (not included: loaded by hub id, or cached features)"
        else:
            source = f"`{encoder.get('source') or 'none'}` (not included: cached features only)"
        shape = (f"{spec.get('num_input_tokens', '?')} × {spec['feature_dim']}" if spec["kind"] != "au"
                 else f"frames × {spec['feature_dim']}")
        tokens = spans[name].num_tokens if name in spans else "?"
        rows.append((f"`<{name}>`", spec["kind"], source, shape, tokens, spec.get("projector", "?")))
    total_tokens = sum(span.num_tokens for span in spans.values())
    lines += ["## Modalities and encoders", "",
              *_table(("placeholder", "kind", "encoder", "features per clip", "media tokens", "projector"), rows), "",
              f"{total_tokens} media tokens per clip with every modality present; missing modalities: "
              f"`{config.get('missing_modality', 'zero')}`"
              + (f"; cross-modal fusion depth {config['fusion'].get('depth')}" if config.get("fusion") else "") + ".", ""]

    lines += ["## Template", "", f"`{template.name}`: {template.description or '(no description)'}", "",
              "An emotion prompt as the model sees it (media tokens collapsed):", "", "```text",
              _example_prompt(processor), "```", "",
              "The template travels in `emollm_processor.json`; `EmoProcessor.from_pretrained` restores it.", ""]

    lines += ["## Training data", ""]
    data, train = training.get("data") or {}, training.get("train") or {}
    if not training:
        lines += ["Not recorded (the run dir holds no `config.yaml`).", ""]
    else:
        dataset = data.get("dataset_dir")
        lines.append(f"- dataset: `{public_name(dataset) or 'not set'}`; train split `{data.get('train_split', 'train')}`, "
                     f"eval split `{data.get('eval_split', 'test')}`; label set `{data.get('label_set', '?')}`")
        counts = _split_counts(dataset)
        if counts:
            lines.append("- clips per split: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        lines.append(f"- tasks: {', '.join(train.get('tasks') or []) or '?'}")
        lines.append("")
    log_rows = [r for r in train_log if r.get("kind", "train") == "train"]  # eval rows carry eval_* metrics
    evals = [r for r in train_log if r.get("kind") == "eval"]
    if log_rows:
        last = log_rows[-1]
        lines += [f"Training log: {last.get('step', '?')} optimizer steps, loss {log_rows[0].get('loss', float('nan')):.4f}"
                  f" at step {log_rows[0].get('step', '?')} -> {last.get('loss', float('nan')):.4f} at the end.", ""]
    if evals:
        e = evals[-1]
        lines += [f"Last evaluation during training (step {e.get('step', '?')}, {e.get('eval_samples', '?')} clips of the "
                  f"eval split): " + ", ".join(f"{k[5:]} {e[k]:.4f}" for k in ("eval_loss", "eval_war", "eval_uar", "eval_waf")
                                               if isinstance(e.get(k), (int, float))) + ".", ""]

    if train:
        lora = train.get("lora") or {}
        adapter_config = run.path / ADAPTER_DIR / "adapter_config.json"
        if run.kind == "lora" and adapter_config.is_file():  # what was saved, over what the config asked for
            saved = _read_json(adapter_config)
            lora = {"r": saved.get("r"), "alpha": saved.get("lora_alpha"), "dropout": saved.get("lora_dropout"),
                    "target_modules": sorted(saved.get("target_modules") or [])}
        adaptation = ("full fine-tune" if run.kind == "full" else
                      f"LoRA r={lora.get('r')} alpha={lora.get('alpha')} dropout={lora.get('dropout')} "
                      f"targets {', '.join(lora.get('target_modules') or []) or 'family default'}")
        precision = "bf16" if train.get("bf16") else "fp16" if train.get("fp16") else "fp32"
        length = f"{train['max_steps']} steps" if train.get("max_steps") else f"{train.get('epochs')} epoch(s)"
        rows = [("stage", train.get("stage")), ("adaptation", adaptation),
                ("learning rate", f"{train.get('lr')} (projectors {train.get('projector_lr') or 'same'}), "
                                  f"{train.get('lr_scheduler')}, warmup {train.get('warmup_ratio')}"),
                ("length", length),
                ("batch", f"{train.get('per_device_batch_size')} per device × {train.get('gradient_accumulation_steps')} "
                          "accumulation"),
                ("max length", train.get("max_length")), ("precision", precision),
                ("quantization", _describe_quantization(config.get("quantization")) if config.get("quantization")
                 else train.get("quantization", "none")),
                ("deepspeed", public_name(train.get("deepspeed")) or "no"),
                ("seed", (training.get("run") or {}).get("seed"))]
        lines += ["## Training config", "", *_table(("setting", "value"), rows), "",
                  f"The whole resolved config is in `{RUN_CONFIG}`: its model paths name this directory's copies, "
                  "its data paths are those of the training machine.", ""]

    lines += ["## Evaluation", ""]
    if metrics:
        label_set = (metrics.get("label_set") or {}).get("name", "?")
        lines += [f"From `{metrics_source}` (emollm evaluate), label set `{label_set}`:", "",
                  *_table(("metric", "value"), _metric_rows(metrics)), ""]
    else:
        lines += ["No evaluation metrics were given (`emollm export --metrics FILE` adds an `emollm evaluate` "
                  "metrics.json).", ""]

    lines += ["## How to load", "", "```python",
              "from emollm.modeling.factory import load_run",
              f'model, processor = load_run("{out_name}")  # or EmoLLMForConditionalGeneration.from_pretrained',
              'features = model.encode_media({"video": frames, "audio": audio_16k})  # live encoders from encoders/',
              "```", "",
              "Paths inside this directory are relative: it can be moved or renamed. "
              "`transformers.AutoModelForCausalLM.from_pretrained` loads it too once `emollm.modeling` is imported "
              "(no `trust_remote_code`).", ""]

    limits = []
    if tiny:
        limits.append("**This is a tiny test model** built from emollm's random-weight fixtures "
                      "(`emollm.testing.tiny`): it exists to exercise code paths and produces no meaningful output.")
    if not all(e.get("included") for e in encoders.values()):
        limits.append("Some frozen encoders are not included: for those modalities the model reads cached features "
                      "only (`emollm features` with the same encoder checkpoints makes them).")
    if kind == "merged":
        limits.append("Merging adds B·A to each target weight in the backbone's dtype: logits match the unmerged "
                      "model within floating-point rounding, not bit for bit.")
    limits.append("Emotion labels come from the training label set only; reasoning text is generated and can be "
                  "wrong or unsupported by the clip. Not for decisions about people.")
    limits += notes
    lines += ["## Limitations", "", *[f"- {item}" for item in limits], ""]
    return "\n".join(front + lines)


# ------------------------------------------------------------------------------------------ export
def _check_target(out: Path, run: Path, overwrite: bool) -> None:
    check_new_output(out, run, source_name="run dir", outside_hint="export to a folder outside the run dir", overwrite=overwrite)


def _move_into_place(tmp: Path, out: Path) -> None:
    """``tmp`` becomes ``out``; an existing ``out`` (checked before: empty, or --overwrite) is replaced."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.with_name(f"{out.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old)


def export_model(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, merge: bool = False,
                 include_encoders: bool = True, metrics: str | os.PathLike | None = None, overwrite: bool = False,
                 max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE) -> dict[str, Any]:
    """Export the run in ``run_dir`` to ``out_dir`` as one self-contained model directory.

    Args:
        merge: merge the LoRA adapter into the backbone (one full model); without it the base model is
            copied to ``backbone/`` and the adapter stays separate. On a full fine-tune: nothing to
            merge, the weights are copied (with a note).
        include_encoders: copy the frozen encoders to ``encoders/<name>/``; False leaves them out (the
            model then reads cached features only).
        metrics: an ``emollm evaluate`` metrics.json for the card (default: one found in the run dir).
        overwrite: replace a non-empty ``out_dir``.
        max_shard_size: shard size of merged weights (save_pretrained's sharding).

    Returns a summary: ``out_dir``, ``kind`` (``lora`` | ``merged`` | ``full``), ``encoders``
    (modality -> path inside the export or None), ``files``, ``bytes``, ``seconds``, ``notes``.
    """
    from emollm import safe_load

    started = time.perf_counter()
    run = inspect_run(run_dir)
    # What the export copies or loads must be whole and carry no pickled code (docs/security.md): a
    # planted pickle would otherwise travel on to whoever loads the export.
    safe_load.vet(run.path, skip=("checkpoint-*", "logs"))
    out = Path(out_dir)
    _check_target(out, run.path, overwrite)
    notes: list[str] = []
    config = run.config
    training = _read_training_config(run.path)
    backbone_revision = ((training.get("model") or {}).get("backbone") or {}).get("revision")
    base_name = config.get("backbone_name_or_path")
    base_dir = locate_checkpoint(base_name, run.path, backbone_revision)
    if run.kind == "lora" and base_dir is None:
        raise EmollmError(f"base model '{base_name}' of run {run.path} not found (not a folder here, not in the HF cache)",
                          hint="put the base model back where the run's config.json points (backbone_name_or_path)")
    quantized = config.get("quantization")
    if merge and quantized and run.kind == "lora":
        from emollm.modeling.quantization import describe

        raise EmollmError(f"cannot --merge run {run.path}: it is a QLoRA run (backbone {describe(quantized)}); its "
                          "adapter was trained against the quantised weights, and merging it into them is not supported",
                          hint="export without --merge: the export holds the adapter and the base model, which it "
                               "quantises again when loaded")
    kind = "full" if run.kind == "full" else "merged" if merge else "lora"
    if merge and run.kind == "full":
        notes.append("`--merge` was asked for, but this run is a full fine-tune (no adapter): its weights were copied.")
        log.warning("run %s is a full fine-tune: nothing to merge, copying its weights", run.path)

    encoders: dict[str, dict[str, Any]] = {}
    for name, spec in (config.get("modalities") or {}).items():
        encoder = spec.get("encoder") or {}
        source = encoder.get("name_or_path")
        if spec.get("kind") == "au" or spec.get("kind") in IMPORTED_KINDS or not source:
            continue  # learned with the model, or imported features: no encoder checkpoint to ship
        entry: dict[str, Any] = {"source": public_name(source), "included": False, "path": None}
        if include_encoders:
            found = locate_checkpoint(source, run.path, encoder.get("revision"))
            if found is None:
                raise EmollmError(f"encoder '{source}' of modality '{name}' not found (not a folder here, not in the HF cache)",
                                  hint="put the encoder back where config.json points, or export with --no-encoders "
                                       "(the model then reads cached features only)")
            entry.update(included=True, path=f"{ENCODERS_DIR}/{name}", found=found)
        elif _is_hub_id(source):
            entry["path"] = source  # a hub id is no path on this machine: it still loads anywhere
        encoders[name] = entry

    from emollm.processing import EmoProcessor

    try:
        processor = EmoProcessor.from_pretrained(run.path)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EmollmError(f"cannot load the processor of run dir {run.path}: {first}",
                          hint="the tokenizer files are incomplete: export a run whose final save completed") from None
    if processor.media_token_ids != config.get("media_token_ids"):
        raise EmollmError(f"{run.path}: model and processor disagree on the media token ids")
    metrics_data, metrics_source = find_metrics(run.path, metrics)

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise EmollmError(f"cannot write beside {out}: {exc.strerror or exc}", hint="check write permission") from exc
    try:
        if kind == "merged":
            _write_merged(run, tmp, max_shard_size)
        elif kind == "lora":
            _copy_unmerged(run, tmp, base_dir, public_name(base_name))  # type: ignore[arg-type]
        else:
            _copy_full(run, tmp)
        for entry in encoders.values():
            if entry["included"]:
                copy_checkpoint(entry.pop("found"), tmp / entry["path"])
        _portable_config(tmp, BACKBONE_DIR if kind == "lora" else None,
                         {name: encoders[name]["path"] if name in encoders else None
                          for name, spec in (config.get("modalities") or {}).items() if spec.get("encoder")})
        processor.save_pretrained(tmp)
        if (run.path / RUN_CONFIG).is_file():
            note = _write_run_config(run.path, tmp, BACKBONE_DIR if kind == "lora" else "",
                                     {name: e["path"] or e["source"] for name, e in encoders.items()})
            if note:
                notes.append(note)
        tiny = base_dir is not None and (base_dir / TINY_FIXTURE_MARKER).is_file()
        card = _model_card(out_name=out.name, kind=kind, run=run, base=public_name(base_name),
                           base_is_local=public_name(base_name) != base_name, tiny=tiny, processor=processor,
                           encoders=encoders, training=training, train_log=_train_log(run.path),
                           metrics=metrics_data, metrics_source=metrics_source, notes=notes)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        info = {"format_version": 1, "emollm_version": __version__, "kind": kind, "base_model": public_name(base_name),
                "source_run": run.path.name, "encoders": {n: e["path"] for n, e in encoders.items()},
                "exported_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        files = [p for p in tmp.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        _move_into_place(tmp, out)
    except OSError as exc:  # disk full, permissions: the machine's state, not a bug
        shutil.rmtree(tmp, ignore_errors=True)
        raise EmollmError(f"writing the export to {out} failed: {exc.strerror or exc}",
                          hint="check free disk space and write permission") from exc
    except EmollmError as exc:  # name the user's export folder, not the staging folder beside it
        shutil.rmtree(tmp, ignore_errors=True)
        exc.args = (str(exc.args[0]).replace(str(tmp), str(out)), *exc.args[1:]) if exc.args else exc.args
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    log.info("exported %s (%s) to %s: %d files, %.1f MB in %.1f s", run.path, kind, out, len(files), size / 1e6, seconds)
    return {"out_dir": str(out), "kind": kind, "encoders": {n: e["path"] for n, e in encoders.items()},
            "files": len(files), "bytes": size, "seconds": seconds, "notes": notes}


__all__ = ["DEFAULT_MAX_SHARD_SIZE", "RunDir", "copy_checkpoint", "export_model", "find_metrics", "inspect_run",
           "locate_checkpoint", "public_name"]
