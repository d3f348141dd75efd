#!/usr/bin/env bash
# The full label-efficiency benchmark on a GPU machine, as one prepared run: the default pipeline,
# then FixMatch in its place, 3 seeds, 100 -> 2,000 labels each. Results (JSON, plots and the
# benchmarks.md sections) go under $OUT (default: docs/), resumable if the run is cut short.
# Usage: OUT=/some/dir benchmarks/label_efficiency_gpu.sh [extra label_efficiency.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-docs}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || { echo "no GPU visible" >&2; exit 1; }
for semi in default fixmatch; do
  extra=(); [ "$semi" = default ] || extra=(--semi "$semi")
  "$PY" benchmarks/label_efficiency.py --device cuda --threads 8 "${extra[@]}" \
    --results "$OUT/label_efficiency_gpu_${semi}.json" --no-write "$@" | tee "$OUT/label_efficiency_gpu_${semi}.txt"
done
