#!/usr/bin/env bash
# Fills .gpu/ (git-ignored) with what benchmarks/gpu.sh needs on a GPU machine that starts bare and reaches no
# network (this project's device machines: Python 3.12, CUDA torch / transformers / peft / accelerate, but no
# trl, datasets or deepspeed, no media stack):
#   .gpu/wheels/   trl, datasets, deepspeed (built here as a wheel, no compiled ops) and the requirements of
#                  theirs that machine lacks, for CPython 3.12 on manylinux x86-64;
#   .gpu/cache/    EMOLLM_CACHE there: the tiny models (the tiny LLaMA's tokenizer and config give the
#                  7B-shaped backbones their tokenizer; tiny_cpu's encoders);
#   .gpu/data/     a built tiny dataset with its tiny_cpu feature cache (zero_stages.py's batch), so nothing
#                  there decodes media; .gpu/dataset.txt names it and its split.
# Run here, from anywhere, with PyPI reachable; then send the repository with .gpu/ carried (64 MiB in all:
# the script prints the size). Versions: the ones installed here, so both machines run the same code.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu/wheels
export EMOLLM_CACHE="$PWD/.gpu/cache"

python - <<'EOF'
from pathlib import Path

from emollm.testing.datasets import build_tiny_training_dataset
from emollm.testing.samples import sample_media_dir

root = Path(".gpu/data")
if not (Path(".gpu/dataset.txt").is_file() and (root / "dataset" / "annotations.jsonl").is_file()):
    dataset, split = build_tiny_training_dataset(sample_media_dir(), root)
    Path(".gpu/dataset.txt").write_text(f"{dataset.relative_to(Path.cwd()) if dataset.is_absolute() else dataset} {split}\n")
print("tiny dataset:", Path(".gpu/dataset.txt").read_text().strip())
EOF

version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
pure=(trl datasets dill multiprocess hjson pydantic annotated-types typing-inspection)
binary=(pydantic-core)
wanted=()
for name in "${pure[@]}" "${binary[@]}"; do wanted+=("$name==$(version "$name")"); done
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .gpu/wheels "${wanted[@]}"
# DeepSpeed is published as source only: a wheel of it, built here without its compiled ops (they are built
# on first use, where a compiler is; emollm's ZeRO path needs none), is pure Python.
ls .gpu/wheels/deepspeed-*.whl >/dev/null 2>&1 \
    || DS_BUILD_OPS=0 python -m pip wheel -q --no-deps --no-build-isolation -w .gpu/wheels "deepspeed==$(version deepspeed)"
ls -1 .gpu/wheels
du -sh .gpu
echo "then, on the GPU machine: bash benchmarks/gpu.sh (with .gpu carried)"
