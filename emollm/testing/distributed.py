"""Two gloo processes on a CPU for distributed tests: ``torchrun`` of a driver script, and a fresh
accelerate state for a second run (a resume) inside the same processes.

DDP runs with ``ACCELERATE_USE_CPU=true`` (what ``accelerate launch --cpu`` sets; else accelerate runs one
process per rank); DeepSpeed runs without it (it would make accelerate drop DeepSpeed) and the training
loop asks accelerate for gloo itself (``loop._process_group_kwargs``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def launch(script: str | os.PathLike, args: list[str], *, deepspeed: bool, cwd: str | os.PathLike,
           timeout: float = 300, port_base: int = 29500, nproc: int = 2) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node nproc script args`` on the CPU, one thread per
    process; raises AssertionError with the tail of its output when it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("ACCELERATE_USE_DEEPSPEED", None)
    if deepspeed:
        env.pop("ACCELERATE_USE_CPU", None)
    else:
        env["ACCELERATE_USE_CPU"] = "true"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(port_base + os.getpid() % 1000), str(script), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    # the first failing rank's traceback, not torchrun's summary, is what a reader needs
    failed = [line for line in proc.stderr.splitlines() if "Error" in line and "[rank" in line]
    assert proc.returncode == 0, (proc.stdout[-2000:], failed[:5], proc.stderr[-4000:])
    return proc


def reset_accelerate_state() -> None:
    """Forget this process's Accelerator: accelerate takes a DeepSpeed plugin only in a process's first one,
    so a second run (a resume) in the same processes needs a fresh state."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()


__all__ = ["launch", "reset_accelerate_state"]
