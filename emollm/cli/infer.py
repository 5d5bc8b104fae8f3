"""``emollm infer``: raw clips in, emotion label and reasoning out, with a trained run."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "infer"
HELP = "explain clips: raw video in, emotion label and reasoning out (a trained run)"
DESCRIPTION = """\
For each CLIP: decode it, track the face, extract AUs and the peak frame (the dataset builder's
analysis), transcribe the speech with whisper when the run's config sets build.asr (or take
--subtitle), run every encoder the model was trained with on the clip, build the prompt with the
backbone's template, generate, and print the label and the answer. A clip that cannot be used gets
an error line; the others are still explained (exit code 2 when any failed).

  emollm infer --model runs/my_run clip.mp4
  emollm infer --model runs/my_run a.mp4 b.mov --task emotion --json
  emollm infer --model runs/my_run clip.mp4 --subtitle "I can't believe it!" --temperature 0.7
  emollm infer --model runs/my_run clip.mp4 build.asr=whisper build.whisper_model=small   # run-config overrides
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from emollm.cli.predict import add_generation_arguments

    parser.add_argument("clips", nargs="+", metavar="CLIP",
                        help="video, audio or image files; KEY=VALUE items override the run's config (e.g. build.asr=whisper)")
    parser.add_argument("--model", required=True, metavar="RUN_DIR",
                        help="the run dir train.py wrote, or an `emollm export --model` of it")
    parser.add_argument("--task", default="reason", choices=("emotion", "reason"),
                        help="emotion: the label; reason: the label with its reasoning")
    parser.add_argument("--subtitle", action="append", default=None, metavar="TEXT",
                        help="what is said in the clip (once per clip, in order); default: whisper when "
                             "build.asr=whisper, else none")
    parser.add_argument("--modalities", default=None, metavar="A,B",
                        help="feed only these modalities (each must be one the model was trained with)")
    parser.add_argument("--json", action="store_true", help="one JSON object per clip (label, text, cues, timings)")
    parser.add_argument("--workdir", default=None, metavar="DIR",
                        help="also write the clips' analysis (records, AU files) here, for a look")
    add_generation_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from emollm.cli.main import split_overrides
    from emollm.cli.predict import generation_overrides
    from emollm.config.paths import check_input_paths
    from emollm.errors import ConfigError
    from emollm.inference import Explainer, run_config

    args.clips, overrides = split_overrides(args.clips)
    if not args.clips:
        raise ConfigError("no clip given", hint="emollm infer --model RUN_DIR CLIP [CLIP ...]")
    if args.subtitle is not None and len(args.subtitle) != len(args.clips):
        raise ConfigError(f"{len(args.subtitle)} --subtitle for {len(args.clips)} clip(s): give one per clip")
    check_input_paths(None, "infer", extra={"--model": args.model})
    check_input_paths(run_config(args.model, overrides), "infer", run_dir=args.model)  # before the model loads
    explainer = Explainer.load(args.model, device=args.device, dtype=args.dtype, overrides=overrides)
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()] if args.modalities else None
    results = explainer.explain_many(args.clips, task=args.task, subtitles=args.subtitle, modalities=modalities,
                                     workdir=args.workdir, batch_size=args.batch_size, **generation_overrides(args))
    for result in results:
        if args.json:
            print(json.dumps(result.to_json(), ensure_ascii=False))
        elif result.error:
            print(f"{result.clip}: error: {result.error}", file=sys.stderr)
        else:
            print(f"{result.clip}")
            print(f"  label:     {result.label or '(none of the label set in the answer)'}")
            print(f"  answer:    {result.text}")
            cues = result.cues
            seen = ", ".join(cues.get("modalities_fed", [])) or "none"
            print(f"  fed:       {seen}" + (f" (absent: {', '.join(f'{k}: {v}' for k, v in cues['modalities_absent'].items())})"
                                          if cues.get("modalities_absent") else ""))  # fmt: skip
            for key in ("aus_present_at_peak", "expression", "subtitle", "tone"):
                if cues.get(key):
                    value = ", ".join(cues[key]) if isinstance(cues[key], list) else cues[key]
                    print(f"  {key.replace('_', ' ')}: {value}")
    return 2 if any(r.error for r in results) else 0
