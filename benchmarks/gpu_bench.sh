#!/usr/bin/env bash
# ==========================================================================================================
# PREPARED FOR USERS WITH NVIDIA GPUs. IT CANNOT BE RUN ON THE PROJECT'S DEVELOPMENT MACHINE (CPU only, no
# GPU), SO NO GPU NUMBER IN THIS REPOSITORY COMES FROM IT. Its CPU-testable parts are tested there:
# tests/test_benchmarks.py checks `bash -n` on this file and the commands that
# `python -m benchmarks.run_all --device gpu --dry-run` builds (launcher, --devices, per-GPU batch, GPU predictor).
#
# Needs: paddlepaddle-gpu==2.6.2 in the project venv (`make venv PADDLE=paddlepaddle-gpu`), nvidia-smi.
# Uses the GPUs CUDA_VISIBLE_DEVICES leaves visible (counted by Paddle, not by nvidia-smi, which ignores it).
# Does, writing every result as JSON + Markdown (+ PNG) into OUT_DIR:
#   0. gpu.json / gpu.md: GPU model, memory and compute capability per visible GPU, driver version, the CUDA
#      version the driver supports and the one Paddle was built with, cuDNN, Paddle;
#   1. step time project vs reference (our tutorial loop) on 1 GPU, and with nproc_per_node = all GPUs
#      (32 sequences per GPU), all-reduce counts/bytes, step-0 equivalence, importance, peak memory
#      (RSS and GPU max allocated), latency per width with the GPU predictor, scale model; summary.md;
#   2. multi-GPU scaling: the step-time benchmark again with 2, 4, ... GPUs, each into scaling/<k>gpu/ (its
#      own summary there, so the summary of step 1 is not overwritten);
#   3. scaling.md: samples/s against the number of GPUs, headed by the GPU model, driver and CUDA version.
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
case "${CUDA_VISIBLE_DEVICES-unset}" in
    ""|-1*) echo "gpu_bench.sh: CUDA_VISIBLE_DEVICES='${CUDA_VISIBLE_DEVICES}' hides every GPU" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt"
DRIVER="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1 | tr -d ' ')"
CUDA_DRIVER="$(sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' "$OUT/nvidia-smi.txt" | head -n 1)"

# Paddle's view of the visible GPUs (this also checks the CUDA build and runs a kernel on GPU 0); prints
# their number last. One process, before any benchmark, so a broken driver stops here with one line.
if ! VISIBLE="$("$PY" - "$OUT" "$DRIVER" "$CUDA_DRIVER" <<'PYEOF'
import json, os, sys, zlib  # zlib before paddle: docs/upstream-defects.md
import paddle

out, driver, cuda_driver = sys.argv[1:4]
if not paddle.is_compiled_with_cuda():
    sys.exit("gpu_bench.sh: this Paddle is a CPU build (install paddlepaddle-gpu==2.6.2)")
n = paddle.device.cuda.device_count()
if n < 1:
    sys.exit("gpu_bench.sh: Paddle sees no GPU (check the driver with nvidia-smi, and CUDA_VISIBLE_DEVICES)")
if float((paddle.to_tensor([1.0, 2.0], place=paddle.CUDAPlace(0)) * 2.0).sum()) != 6.0:
    sys.exit("gpu_bench.sh: a test computation on GPU 0 gave a wrong result")
gpus = []
for i in range(n):
    p = paddle.device.cuda.get_device_properties(i)
    gpus.append({"index": i, "name": p.name, "memory_GiB": round(p.total_memory / 2**30, 1),
                 "compute_capability": f"{p.major}.{p.minor}"})
info = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"), "visible_gpus": n, "gpus": gpus,
        "driver_version": driver, "driver_cuda_version": cuda_driver, "paddle": paddle.__version__,
        "paddle_cuda_version": paddle.version.cuda(), "paddle_cudnn_version": paddle.version.cudnn()}
with open(os.path.join(out, "gpu.json"), "w") as f:
    json.dump(info, f, indent=2)
models = sorted({g["name"] for g in gpus})
lines = [f"GPUs: {n} x {' / '.join(models)}; driver {driver} (CUDA {cuda_driver}); Paddle {paddle.__version__}"
         f" built with CUDA {paddle.version.cuda()}, cuDNN {paddle.version.cudnn()}", "",
         "| index | GPU | memory GiB | compute capability |", "|---:|---|---:|---:|"]
lines += [f"| {g['index']} | {g['name']} | {g['memory_GiB']} | {g['compute_capability']} |" for g in gpus]
with open(os.path.join(out, "gpu.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
print(n)
PYEOF
)"; then
    echo "gpu_bench.sh: the GPU check failed (see the line above)" >&2
    exit 2
fi
VISIBLE="$(printf '%s\n' "$VISIBLE" | tail -n 1)"
if [ -z "$NGPU" ]; then
    NGPU="$VISIBLE"
elif [ "$NGPU" -gt "$VISIBLE" ]; then
    echo "gpu_bench.sh: asked for $NGPU GPUs but only $VISIBLE are visible (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset})" >&2
    exit 2
fi
head -n 1 "$OUT/gpu.md"

WORK="$OUT/work"   # the reordered teacher weights, shared by all the runs below

# 1. everything, 1 GPU and all NGPU GPUs
"$PY" -m benchmarks.run_all --device gpu --gpus "$NGPU" --out "$OUT" --work-dir "$WORK" "$@"

# 2. scaling: 2, 4, ... GPUs (the NGPU run is already done above), each in a directory of its own
k=2
while [ "$k" -lt "$NGPU" ]; do
    "$PY" -m benchmarks.run_all --device gpu --gpus "$NGPU" --nproc "$k" --only "step_${k}proc" \
        --out "$OUT/scaling/${k}gpu" --work-dir "$WORK"
    k=$(( k * 2 ))
done

# 3. the scaling table
"$PY" - "$OUT" <<'PYEOF'
import glob, json, os, sys
out = sys.argv[1]
rows = {}
for path in glob.glob(os.path.join(out, "step_time_*proc.json")) + \
        glob.glob(os.path.join(out, "scaling", "*gpu", "step_time_*proc.json")):
    r = json.load(open(path))
    rows[r["processes"]] = (r["processes"], r["fixed_batch"]["global_batch"], r["project"]["samples_per_s_fixed"],
                            r["reference"]["samples_per_s_fixed"], r["ratio_project_over_reference"])
base = rows.get(1)
gpu_line = open(os.path.join(out, "gpu.md")).readline().strip()
lines = ["# Multi-GPU scaling (32 sequences per GPU)", "", gpu_line, "",
         "| GPUs | global batch | project samples/s | reference samples/s | project/reference step | project speed-up vs 1 GPU |",
         "|---:|---:|---:|---:|---:|---:|"]
for n, gb, p, ref, ratio in sorted(rows.values()):
    speedup = f"{p / base[2]:.2f}" if base else ""
    lines.append(f"| {n} | {gb} | {p:.1f} | {ref:.1f} | {ratio:.3f} | {speedup} |")
open(os.path.join(out, "scaling.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
echo "GPU results in $OUT (GPU model, driver and CUDA versions in $OUT/gpu.md)"
