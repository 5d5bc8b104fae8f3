#!/usr/bin/env bash
# Issue #19's GPU figures in one prepared run: the 7B-shaped LoRA bf16 step's tokens/s and MFU, ZeRO-2 vs
# ZeRO-3 on emollm's own step, and emollm's train.py against TRL's SFTTrainer on the same batches.
#
#   bash benchmarks/gpu_prepare.sh          # here, once, with network access to PyPI: fills .gpu/ (ignored)
#   bash benchmarks/gpu.sh [OUT_DIR]        # on the GPU machine, from the repository root, .gpu/ beside it
#
# The GPU machines of this project start bare and reach no network: gpu_prepare.sh puts in .gpu/ what they
# lack (wheels of trl, datasets, deepspeed and their missing requirements; the tiny models and a built tiny
# dataset with its feature cache, so nothing there decodes media). This script installs those wheels into
# a private folder (never over the machine's own torch / transformers), then runs, each with its own time
# limit, its log in OUT_DIR (default $OUT, else gpu_figures/):
#   1. train_step.py  --sizes large: emollm's step vs bare HF+PEFT on one GPU, and the bare 7B-shaped
#      LLaMA + LoRA bf16 step's tokens/s and MFU;
#   2. zero_stages.py: ZeRO-2 vs ZeRO-3 on emollm's step (7B shape, bf16, LoRA r 64), every GPU;
#   3. vs_trl.py --backbone 7b --dtype bfloat16: emollm vs TRL in lockstep on a 7B-shaped bf16 backbone.
# Budget: about 7 minutes on one H100/H200 (the limits below sum to 9.3; give the run timeout_s 600).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_figures}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE

if [ -d .gpu/wheels ] && ls .gpu/wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-site \
        .gpu/wheels/*.whl >"$out/install.log" 2>&1 || { echo "gpu.sh: installing .gpu/wheels failed"; tail -5 "$out/install.log"; }
    export PYTHONPATH="/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d .gpu/cache ] && export EMOLLM_CACHE="$PWD/.gpu/cache"
dataset=()
[ -f .gpu/dataset.txt ] && read -r ds split <.gpu/dataset.txt && dataset=(--dataset "$PWD/$ds" --split "$split")

python3 - <<'EOF' | tee "$out/env.txt"
import importlib, torch
print("gpu:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none", "x", torch.cuda.device_count())
for name in ("torch", "transformers", "peft", "accelerate", "deepspeed", "trl", "datasets"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except Exception as exc:  # noqa: BLE001 - a missing one is reported, its step fails with its own error
        print(f"{name} MISSING ({type(exc).__name__}: {exc})")
EOF

step() {  # step NAME SECONDS COMMAND...: one benchmark, its log in $out/NAME.log, its exit status printed
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "-- $name: exit $rc after $((SECONDS - t0)) s"
    grep -v -e "Loading weights" -e "Warning" "$out/$name.log" | tail -n 30
}

step train_step 120 python3 benchmarks/train_step.py --sizes large --steps 10
step zero_stages 200 python3 benchmarks/zero_stages.py --json "$out/zero_stages.json" "${dataset[@]}"
step vs_trl 240 python3 benchmarks/vs_trl.py --device cuda --threads 0 --backbone 7b --dtype bfloat16 \
    --out /tmp/vs_trl_7b --json "$out/vs_trl.json"
echo "gpu.sh: logs in $out"
