#!/usr/bin/env bash
# ==========================================================================================================
# PREPARED FOR USERS WITH NVIDIA GPUs. IT CANNOT BE RUN ON THE PROJECT'S DEVELOPMENT MACHINE (CPU only, no
# GPU), SO NO GPU NUMBER IN THIS REPOSITORY COMES FROM IT. Its CPU-testable parts are tested there:
# tests/test_benchmarks.py checks `bash -n` on this file and the commands that
# `python -m benchmarks.run_all --device gpu --dry-run` builds (launcher, --devices, per-GPU batch, GPU predictor).
#
# Needs: paddlepaddle-gpu==2.6.2 in the project venv (`make venv PADDLE=paddlepaddle-gpu`), nvidia-smi.
# Does, writing every result as JSON + Markdown (+ PNG) into OUT_DIR:
#   1. step time project vs reference (our tutorial loop) on 1 GPU, and with nproc_per_node = all GPUs
#      (32 sequences per GPU), all-reduce counts/bytes, step-0 equivalence, importance, peak memory
#      (RSS and GPU max allocated), latency per width with the GPU predictor, scale model;
#   2. multi-GPU scaling: the step-time benchmark again with 2, 4, ... GPUs (nproc_per_node = k);
#   3. scaling.md: samples/s against the number of GPUs.
#
# Usage: benchmarks/gpu_bench.sh [OUT_DIR] [NUM_GPUS] [extra run_all flags, e.g. --results-json runs/demo/results.json]
# ==========================================================================================================
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
OUT="${1:-$ROOT/benchmarks/results_gpu}"
NGPU="${2:-}"
shift $(( $# > 2 ? 2 : $# ))
cd "$ROOT"

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_bench.sh: nvidia-smi not found; this script needs NVIDIA GPUs" >&2
    exit 2
fi
if [ -z "$NGPU" ]; then
    NGPU="$(nvidia-smi -L | grep -c '^GPU ')"
fi
if ! "$PY" -c "import zlib, paddle, sys; sys.exit(0 if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0 else 1)"; then
    echo "gpu_bench.sh: $PY has no CUDA build of Paddle or sees no GPU (install paddlepaddle-gpu==2.6.2)" >&2
    exit 2
fi

mkdir -p "$OUT"
WORK="$OUT/work"   # the reordered teacher weights, shared by all the runs below
nvidia-smi > "$OUT/nvidia-smi.txt"
"$PY" -c "import zlib, paddle; print(paddle.__version__, paddle.version.cuda(), paddle.version.cudnn())" > "$OUT/paddle-gpu.txt"

# 1. everything, 1 GPU and all NGPU GPUs
"$PY" -m benchmarks.run_all --device gpu --gpus "$NGPU" --out "$OUT" --work-dir "$WORK" "$@"

# 2. scaling: 2, 4, ... GPUs (the NGPU run is already done above)
k=2
while [ "$k" -lt "$NGPU" ]; do
    "$PY" -m benchmarks.run_all --device gpu --gpus "$NGPU" --nproc "$k" --only "step_${k}proc" \
        --out "$OUT" --work-dir "$WORK"
    k=$(( k * 2 ))
done

# 3. the scaling table
"$PY" - "$OUT" <<'PYEOF'
import glob, json, os, sys
out = sys.argv[1]
rows = []
for path in glob.glob(os.path.join(out, "step_time_*proc.json")):
    r = json.load(open(path))
    rows.append((r["processes"], r["fixed_batch"]["global_batch"], r["project"]["samples_per_s_fixed"],
                 r["reference"]["samples_per_s_fixed"], r["ratio_project_over_reference"]))
rows.sort()
base = {r[0]: r for r in rows}.get(1)
lines = ["# Multi-GPU scaling (32 sequences per GPU)", "",
         "| GPUs | global batch | project samples/s | reference samples/s | project/reference step | project speed-up vs 1 GPU |",
         "|---:|---:|---:|---:|---:|---:|"]
for n, gb, p, ref, ratio in rows:
    speedup = f"{p / base[2]:.2f}" if base else ""
    lines.append(f"| {n} | {gb} | {p:.1f} | {ref:.1f} | {ratio:.3f} | {speedup} |")
open(os.path.join(out, "scaling.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
echo "GPU results in $OUT"
