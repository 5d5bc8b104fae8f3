"""Does the trained model read its media? A task whose label only the AU tokens carry.

    python benchmarks/learns_from_media.py                       # real SmolLM2-135M-Instruct backbone
    python benchmarks/learns_from_media.py --backbone tiny       # the tiny local LLaMA (seconds)
    python benchmarks/learns_from_media.py --backbone PATH --steps 200 --clips 400 --out runs/lfm

The data (``emollm.testing.media_task``): clip records in the built-dataset format whose per-frame AU
side files are drawn per class (a FACS prototype per emotion at a random strength and apex, plus
talking, blinks, a distractor AU and noise), the text the same for every clip; split ``train`` /
``test`` (held out). The run, as a user runs it: ``train.py --config`` (the learned ``au`` encoder
alone, LoRA), ``emollm predict --split test`` and ``emollm evaluate`` on the test clips, then the same
on a copy of the test clips with every AU input zeroed. Each command runs in its own process.
Printed: each stage's time, and last one JSON line with ``uar_with_media``, ``uar_media_zeroed``,
``chance`` (1 / classes) and more (WARs, the labels predicted, backbone, steps, seconds).

The stage times are one timed run each (train, predict, evaluate as a user runs them), not protocol
rounds: a second training run would take as long again and answer nothing the first did not; they are
context for the UARs, not a comparison. The protocol header (threads, OMP_WAIT_POLICY, which the
commands' processes inherit) is printed first; ``--threads N`` fixes the thread count.

``--shuffled``: the control, the AUs drawn from a class independent of each clip's label (nothing in
a clip carries its label): the trained model must then sit at chance with media too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # the shared protocol, also when loaded by path (tests)

import protocol  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default=None,
                        help="'tiny', or an HF folder / hub id (default: SmolLM2-135M-Instruct via emollm.real_models)")
    parser.add_argument("--template", default=None, help="chat template name (default: guessed from the tokenizer)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the backbone recipe's)")
    parser.add_argument("--clips", type=int, default=224, help="clips in all, train + test (default: 224)")
    parser.add_argument("--test", type=int, default=64, help="held-out test clips, of the --clips (default: 64)")
    parser.add_argument("--batch-size", type=int, default=None, help="per-device batch size (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shuffled", action="store_true", help="control: media independent of the label")
    parser.add_argument("--in-process", action="store_true", help="run the commands in this process (faster start-up)")
    parser.add_argument("--out", default=None, help="work dir to keep (data, config, run, predictions, eval)")
    parser.add_argument("--threads", type=int, default=None, help="torch / OMP threads (default: torch's own)")
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads cost more than they save on 2 cores
    print(protocol.header(protocol.setup_threads(args.threads)), flush=True)
    from emollm.testing.media_task import run_media_task

    recipe = {"batch_size": args.batch_size} if args.batch_size else None
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="learns_from_media_"))
    from emollm.errors import EmollmError

    t0 = time.perf_counter()
    try:
        result = run_media_task(work, backbone=args.backbone, steps=args.steps, clips=args.clips, n_test=args.test,
                                seed=args.seed, media_informative=not args.shuffled, template=args.template,
                                subprocess_run=not args.in_process, recipe=recipe,
                                report=lambda line: print(line, flush=True))  # fmt: skip
    except EmollmError as err:  # e.g. too few steps: no answer names an emotion yet, evaluate says so
        print(f"error: {err.message}", file=sys.stderr)
        return 2
    result["seconds"]["total_s"] = round(time.perf_counter() - t0, 1)
    print(f"UAR with media {result['uar_with_media']:.3f}, media zeroed {result['uar_media_zeroed']:.3f}, "
          f"chance {result['chance']:.3f} ({result['n_test']} held-out clips; work dir {work})")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
