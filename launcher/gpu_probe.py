"""Is a GPU actually usable on this node? A probe in a child process, and the GPU labels a job may use.

A CUDA wheel's name says nothing about the driver: with a broken driver ``--device gpu`` used to train
on CPU over gloo, silently. The probe imports Paddle in a child process (a broken CUDA install may crash
the interpreter that initialises it), counts the GPUs it sees and runs a small computation on GPU 0.
"""
from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import dataclass
from typing import List, Mapping, Optional

from dynabert.errors import UserError
from launcher.launch_cmd import gpus_hidden, without_job_variables


def wants_gpus(args: argparse.Namespace) -> bool:
    return args.device == "gpu" or (args.device == "auto" and args.devices is not None)


# Run in a child process: a broken CUDA install may crash the interpreter that initialises it. It sees the
# job's CUDA_VISIBLE_DEVICES and runs a small computation on GPU 0 (a driver can report devices and still
# fail to run a kernel). The CPU wheel is refused here too, instead of silently training on CPU over gloo.
GPU_PROBE_TAG = "DYNABERT_GPU_PROBE "
GPU_PROBE_CODE = f"""
import json, zlib  # zlib before paddle: docs/upstream-defects.md
r = {{"cuda_build": False, "count": 0, "usable": False, "detail": ""}}
try:
    import paddle
    r["cuda_build"] = bool(paddle.is_compiled_with_cuda())
    if r["cuda_build"]:
        r["count"] = int(paddle.device.cuda.device_count())
    if r["count"] > 0:
        r["detail"] = paddle.device.cuda.get_device_name(0)
        x = paddle.to_tensor([1.0, 2.0], place=paddle.CUDAPlace(0))
        r["usable"] = float((x * 2.0).sum()) == 6.0
except Exception as e:
    r["detail"] = (type(e).__name__ + ": " + str(e)).strip()
print({GPU_PROBE_TAG!r} + json.dumps(r), flush=True)
"""
GPU_PROBE_TIMEOUT_S = 300  # CUDA initialisation can take a while on a cold node


@dataclass(frozen=True)
class GpuProbe:
    cuda_build: bool
    count: int  # GPUs the CUDA runtime sees, after CUDA_VISIBLE_DEVICES
    usable: bool  # the computation on GPU 0 gave the right answer
    detail: str = ""  # GPU 0's name, or the error


def parse_gpu_probe(returncode: int, output: str) -> GpuProbe:
    lines = output.splitlines()
    for line in reversed(lines):
        if line.startswith(GPU_PROBE_TAG):
            d = json.loads(line[len(GPU_PROBE_TAG):])
            return GpuProbe(bool(d["cuda_build"]), int(d["count"]), bool(d["usable"]), str(d["detail"]))
    last = next((x.strip() for x in reversed(lines) if x.strip()), "no output")
    raise UserError(f"the GPU check (importing paddle in a child process) ended with exit code {returncode}"
                    f" and no result: {last}")


def usable_gpus(probe: GpuProbe, flag: str, env: Mapping[str, str]) -> List[str]:
    """The labels (as Paddle's launcher names them) of the GPUs this node can run on, or a one-line error."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if not probe.cuda_build:
        raise UserError(f"{flag}: the installed Paddle is a CPU build (paddle.is_compiled_with_cuda() is False);"
                        " install paddlepaddle-gpu (make venv PADDLE=paddlepaddle-gpu)")
    if probe.count == 0:
        seen = f" with CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
        why = f" ({probe.detail})" if probe.detail else ""
        raise UserError(f"{flag}: Paddle's CUDA build sees no GPU{seen}{why}: check the NVIDIA driver"
                        " (nvidia-smi) and CUDA_VISIBLE_DEVICES")
    if not probe.usable:
        raise UserError(f"{flag}: a test computation on GPU 0 failed ({probe.detail or 'wrong result'}): check"
                        " the NVIDIA driver and that its CUDA version suits paddlepaddle-gpu")
    if visible is None or visible.strip() == "all":
        return [str(i) for i in range(probe.count)]
    return [x.strip() for x in visible.split(",") if x.strip()][:probe.count]


def run_gpu_probe(python: str, env: Mapping[str, str]) -> GpuProbe:
    try:
        done = subprocess.run([python, "-c", GPU_PROBE_CODE], env=without_job_variables(env), capture_output=True,
                              text=True, errors="replace", timeout=GPU_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"the GPU check did not finish within {GPU_PROBE_TIMEOUT_S} s: check the NVIDIA driver"
                        " (nvidia-smi)") from None
    return parse_gpu_probe(done.returncode, done.stdout + done.stderr)


def gpu_labels_for(args: argparse.Namespace, env: Mapping[str, str], python: str) -> Optional[List[str]]:
    """The usable GPUs when the job wants GPUs. A dry run does not probe (it may preview a GPU command on a
    CPU machine): it takes CUDA_VISIBLE_DEVICES at its word, or the --devices/--nproc_per_node given."""
    if not wants_gpus(args):
        return None
    flag = "--device gpu" if args.devices is None else f"--devices {args.devices}"
    if not args.dry_run:
        return usable_gpus(run_gpu_probe(python, env), flag, env)
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() != "all" and not gpus_hidden(visible):
        return [x.strip() for x in visible.split(",") if x.strip()]
    if args.devices is None and args.nproc_per_node is None:
        raise UserError(f"{flag} --dry-run: cannot count this node's GPUs without starting CUDA; give --devices,"
                        " --nproc_per_node or CUDA_VISIBLE_DEVICES")
    return None
