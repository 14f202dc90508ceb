"""``dynabert-bench``: training throughput of a config on 1, 2, 4... processes, GPUs or nodes.

    dynabert-bench --config my.yaml --world-sizes 1,2,4,8 --steps 20 [--device gpu] [--compare-reference]

For each world size it launches, through the same command builder as ``dynabert-launch``, a worker that
runs the real compress step (``dynabert/train/bench_step.py``) on the configured model, widths, batch size and
sequence lengths: warm-up steps, then ``--steps`` timed ones. Rank 0 writes each world size's records;
this process (on node 0) turns them into ``<out_dir>/bench/bench.{md,json,png}`` and prints the table.
Multi-node: run it on every node with the same flags, like ``dynabert-launch``; world size W then runs
W / --nnodes processes per node. GPUs: a world size needing more GPUs per node than are usable is refused
before anything starts. CPUs (gloo): any world size runs; above the core count the processes share cores
and the figures show the contention.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, TextIO, Tuple

from dynabert.errors import UserError
from launcher import bench_report, cli, gpu_probe
from launcher.launch_cmd import (
    LaunchOptions,
    available_cpus,
    build_launch_command,
    choose_gpus,
    describe,
    env_diff,
    log_dir_for,
)

REFERENCE = os.path.join(bench_report.ROOT, "benchmarks", "seed_reference.py")


def build_parser() -> argparse.ArgumentParser:
    """dynabert-launch's flags (--config, --set, --out_dir, devices, nodes, --dry-run) plus the benchmark's."""
    p = cli.build_parser()
    p.prog = "dynabert-bench"
    p.description = __doc__.splitlines()[0].split(": ", 1)[1]
    p.add_argument("--world-sizes", dest="world_sizes", help="comma-separated process counts, e.g. 1,2,4 "
                   "(default: --nproc_per_node x --nnodes); each must divide compress.optim.batch_size")
    p.add_argument("--steps", type=int, default=10, help="timed steps per world size (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--compare-reference", dest="compare_reference", action="store_true",
                   help="also time the tutorial's loop (benchmarks/seed_reference.py, in the source checkout only) "
                   "on the same batches")
    p.add_argument("--data", choices=("auto", "synthetic"), default="auto",
                   help="auto: the config's training data (as training loads it), synthetic rows if it has none")
    p.add_argument("--lengths", help="synthetic rows' token counts: N, or A-B drawn uniformly (default max_seq_len)")
    p.add_argument("--report", help="directory for bench.md/.json/.png (default <out_dir>/bench)")
    p.add_argument("--peak-seconds", dest="peak_seconds", type=float, default=1.0,
                   help="seconds per shape of the matmul benchmark that MFU is measured against (default 1)")
    return p


def parse_world_sizes(args: argparse.Namespace) -> List[int]:
    if args.world_sizes is None:
        return [args.nnodes * (args.nproc_per_node or 1)]
    if args.nproc_per_node is not None:
        raise UserError("--nproc_per_node: not with --world-sizes (each world size sets it: W / --nnodes)")
    try:
        sizes = [int(x) for x in args.world_sizes.split(",")]
    except ValueError:
        raise UserError(f"--world-sizes {args.world_sizes}: expected comma-separated integers, e.g. 1,2,4") from None
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise UserError(f"--world-sizes {args.world_sizes}: expected distinct integers >= 1")
    return sorted(sizes)


def parse_lengths(text: Optional[str], max_seq_len: int) -> Optional[Tuple[int, int]]:
    """``N`` (every synthetic row N tokens) or ``A-B`` (uniform in [A, B]); None: max_seq_len."""
    if not text:
        return None
    low, sep, high = text.partition("-")
    try:
        a, b = int(low), int(high if sep else low)
    except ValueError:
        raise UserError(f"--lengths {text}: expected N or A-B (token counts)") from None
    if not 3 <= a <= b <= max_seq_len:
        raise UserError(f"--lengths {text}: need 3 <= A <= B <= data.max_seq_len ({max_seq_len})")
    return a, b


@dataclass(frozen=True)
class Run:
    world_size: int
    opts: LaunchOptions
    result: str        # rank 0 writes the world size's records here
    worker: List[str]  # what follows the interpreter in each worker's command line


def check_reference_available(wanted: bool, path: str) -> None:
    """The tutorial's loop is benchmark code, not part of the installed package (it reproduces upstream's
    defects on purpose): --compare-reference needs the source checkout it lives in."""
    if wanted and not os.path.isfile(path):
        raise UserError(f"--compare-reference needs the source checkout: it times the tutorial's loop in {path}, "
                        "which an installed dynabert-launcher does not contain; run dynabert-bench from a clone")


def plan(args: argparse.Namespace, *, gpu_labels: Optional[Sequence[str]], report_dir: str) -> List[Run]:
    """Every check that can fail, before anything starts; then one launch per world size."""
    from launcher.config import load_config

    for flag, given in (("--resume", args.resume), ("--max_restarts", args.max_restarts),
                        ("--overwrite", args.overwrite)):
        if given:
            raise UserError(f"{flag}: not a dynabert-bench flag (a benchmark keeps no checkpoints)")
    if args.steps < 1 or args.warmup < 0:
        raise UserError(f"--steps {args.steps} --warmup {args.warmup}: need at least 1 timed step, warm-up >= 0")
    check_reference_available(args.compare_reference, REFERENCE)
    cfg = load_config(args.config, cli.worker_overrides(args))
    sizes = parse_world_sizes(args)
    lengths = parse_lengths(args.lengths, cfg.data.max_seq_len)
    batch = cfg.compress.optim.batch_size
    for ws in sizes:
        if ws % args.nnodes:
            raise UserError(f"--world-sizes: {ws} processes do not split over --nnodes {args.nnodes}")
        if batch % ws:
            raise UserError(f"compress.optim.batch_size: global batch {batch} does not divide among world size {ws}")
    if cfg.run.precision != "fp32" and args.device == "cpu":
        raise UserError(f"run.precision: {cfg.run.precision} needs GPUs; use fp32 with --device cpu")
    if args.compare_reference and not os.path.isfile(REFERENCE):
        raise UserError(f"--compare-reference: needs the project's source checkout ({REFERENCE} not found)")
    pool = list(gpu_labels) if gpu_labels is not None else None
    if pool is not None and args.devices is not None:
        pool, _ = choose_gpus(devices=args.devices, nproc=None, usable=pool, flag=f"--devices {args.devices}")
        pool = pool.split(",")
    runs = []
    for ws in sizes:
        nproc = ws // args.nnodes
        if pool is not None and nproc > len(pool):
            raise UserError(f"--world-sizes: world size {ws} needs {nproc} GPU(s) per node, but this node has "
                            f"{len(pool)} usable ({','.join(pool) or 'none'})")
        here = os.path.join(report_dir, f"ws{ws}")
        opts = LaunchOptions(log_dir=log_dir_for(here, args.nnodes, args.node_rank), nproc_per_node=nproc,
                             nnodes=args.nnodes, master=args.master, node_rank=args.node_rank,
                             devices=",".join(pool[:nproc]) if pool is not None else None,
                             device=args.device, job_id=f"dynabert_bench_ws{ws}", host=args.host)
        result = os.path.join(here, "result.json")
        worker = ["-m", "launcher.bench", "worker", "--config", os.path.abspath(args.config)]
        for text in cli.worker_overrides(args):
            worker += ["--set", text]
        worker += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--data", args.data,
                   "--nnodes", str(args.nnodes), "--result", result, "--peak-seconds", str(args.peak_seconds)]
        worker += (["--lengths", f"{lengths[0]}-{lengths[1]}"] if lengths else [])
        worker += (["--compare-reference"] if args.compare_reference else [])
        runs.append(Run(ws, opts, result, worker))
    return runs


def resolve_device(args: argparse.Namespace, env: Dict[str, str]) -> Tuple[str, Optional[List[str]]]:
    """(device, usable GPU labels or None). ``auto`` becomes gpu or cpu here (a probe in a child process),
    because the device count decides which world sizes can run; a dry run does not probe."""
    if gpu_probe.wants_gpus(args):
        return "gpu", gpu_probe.gpu_labels_for(args, env, sys.executable)
    if args.device == "cpu" or args.dry_run:
        return args.device, None
    probe = gpu_probe.run_gpu_probe(sys.executable, env)
    if probe.cuda_build and probe.count > 0 and probe.usable:
        return "gpu", gpu_probe.usable_gpus(probe, "--device auto", env)
    return "cpu", None


def _bench(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if not os.path.isfile(args.config):
        raise UserError(f"--config {args.config}: file not found")
    base_env, cpus = dict(os.environ), available_cpus()
    slurm_note = cli.resolve_nodes(args, base_env)
    if slurm_note:
        print(f"dynabert-bench: {slurm_note}", file=err, flush=True)
    device, labels = resolve_device(args, base_env)
    args = argparse.Namespace(**{**vars(args), "device": device})
    report_dir = os.path.abspath(args.report or os.path.join(cli.resolve_out_dir(args), "bench"))
    runs = plan(args, gpu_labels=labels, report_dir=report_dir)
    route_ip = cli.source_ip_towards(args.master.rpartition(":")[0]) if args.nnodes > 1 and args.master else None
    launched = []
    for run in runs:
        argv, env = build_launch_command(run.opts, run.worker, base_env=base_env, cpu_count=cpus, route_ip=route_ip)
        line = describe(run.opts, env, cpus, base_env, route_ip=route_ip)
        if args.dry_run:
            print(f"# world size {run.world_size}: {line}", file=out)
            for change in env_diff(base_env, env):
                print(change, file=out)
            print(shlex.join(argv), file=out)
            continue
        print(f"dynabert-bench: world size {run.world_size}: {line}", file=err, flush=True)
        if os.path.exists(run.result):
            os.remove(run.result)  # never report a previous run's figures
        job = cli.run_job(argv, env, out, err)
        if job.returncode != 0:
            print(f"error: world size {run.world_size}: {job.explain(run.opts)}", file=err, flush=True)
            return job.exit_status()
        launched.append((run, env))
    if args.dry_run:
        return 0
    if args.node_rank != 0:
        print(f"dynabert-bench: node {args.node_rank} done; node 0 writes the report", file=err)
        return 0
    report = assemble(args, launched, cpus, device)
    paths = bench_report.write(report, report_dir)
    print("\n" + bench_report.markdown(report) + "\n", file=out)
    print(f"dynabert-bench: report in {paths['md']}, {paths['json']}, {paths['png']}", file=err)
    return 0


def assemble(args: argparse.Namespace, launched, cpus: int, device: str) -> dict:
    results = []
    for run, _env in launched:
        if not os.path.isfile(run.result):
            raise UserError(f"world size {run.world_size}: rank 0 wrote no {run.result} (see {run.opts.log_dir})")
        with open(run.result) as f:
            results.append(json.load(f))
    rows = [bench_report.world_size_summary(r) for r in results]
    bench_report.add_efficiency(rows)
    first = results[0]
    return {"benchmark": "dynabert-bench", "command": ["dynabert-bench"] + list(getattr(args, "argv", [])),
            "config": os.path.abspath(args.config), "overrides": cli.worker_overrides(args),
            "device": device, "nnodes": args.nnodes, "world_sizes": [r["world_size"] for r in rows],
            "warmup_steps": args.warmup, "timed_steps": args.steps, "workload": first["workload"],
            "results": rows, "machine": bench_report.machine(first["ranks"][0], cpus)}


# ------------------------------------------------------------------------------------------------
# the worker: one process of one world size's job
# ------------------------------------------------------------------------------------------------
def worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launcher.bench worker")
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--data", choices=("auto", "synthetic"), default="auto")
    p.add_argument("--lengths")
    p.add_argument("--compare-reference", dest="compare_reference", action="store_true")
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--result", required=True)
    p.add_argument("--peak-seconds", dest="peak_seconds", type=float, default=1.0)
    return p


def worker_main(argv: Sequence[str]) -> int:
    from launcher.config import load_config

    args = worker_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        from paddlenlp.utils.log import logger as paddlenlp_logger

        from launcher.fleet_setup import init_collectives

        paddlenlp_logger.set_level("WARNING")
        comms = init_collectives()
        mine, workload = measure_rank(cfg, comms, args, parse_lengths(args.lengths, cfg.data.max_seq_len))
        ranks = comms.all_gather_object(mine)
        if comms.is_main:
            from dynabert.io_utils import atomic_write_text

            atomic_write_text(args.result, json.dumps({"world_size": comms.world_size,
                                                       "nnodes": args.nnodes,
                                                       "workload": workload, "ranks": ranks}) + "\n")
        comms.shutdown()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0


def measure_rank(cfg, comms, args: argparse.Namespace, lengths: Optional[Tuple[int, int]]) -> Tuple[dict, dict]:
    """This rank's step records (and the reference's, after the project's: its memory is not counted),
    and the workload's description."""
    from dataclasses import asdict

    from dynabert.model.pretrained import model_source
    from dynabert.train import bench_step as B

    batch, total = cfg.compress.optim.batch_size, args.warmup + args.steps
    sync = B.device_sync()
    w = B.load_workload(cfg, batch, total * batch, synthetic=args.data == "synthetic", lengths=lengths)
    teacher = B.load_teacher(cfg, w)
    state = {k: v.numpy() for k, v in teacher.state_dict().items()} if args.compare_reference else None
    step = B.CompressStep(teacher, cfg, comms, regression=w.regression, steps=total, sync=sync)
    records = B.measure(step, B.global_batches(w, cfg, comms), warmup=args.warmup, steps=args.steps, sync=sync,
                        barrier=comms.barrier, on_step=_progress(comms, "project", args.warmup, total),
                        flops=step.flops)
    mine = B.rank_report(records, comms, B.peak_memory())
    # MFU's denominator, on every rank at once (each beside the others, as in the step), in the step's dtype.
    comms.barrier()
    dtype = {"fp16": "float16", "bf16": "bfloat16"}.get(cfg.run.precision, "float32")
    mine["matmul_peak_flops"] = {kind: B.matmul_peak(shapes, dtype=dtype, min_seconds=args.peak_seconds, sync=sync)
                                 for kind, shapes in B.peak_shapes(step.shape).items()}
    mine["peak_dtype"] = dtype
    # Read PaddleCollectives' own counters: nothing else all-reduced yet, so this is per step.
    mine["all_reduce_calls_per_step"] = mine.pop("all_reduce_calls") / total
    mine["all_reduce_bytes_per_step"] = mine.pop("all_reduce_bytes") / total
    mine.update(process_facts())
    source = cfg.model.teacher or model_source(cfg.model.name_or_path)
    if args.compare_reference:
        del step
        mine["reference_steps"] = [asdict(r) for r in reference_records(cfg, comms, w, state, args, source, sync)]
    shape = teacher.config
    workload = {"model": cfg.model.teacher or cfg.model.name_or_path,
                "model_shape": f"{shape.num_hidden_layers} layers, hidden {shape.hidden_size}, "
                               f"{shape.num_attention_heads} heads, FFN {shape.intermediate_size}",
                "widths": list(cfg.compress.widths), "global_batch": batch, "max_seq_len": cfg.data.max_seq_len,
                "padding": cfg.data.padding, "group_by_length": cfg.data.group_by_length,
                "precision": cfg.run.precision, "data": w.source}
    return mine, workload


def reference_records(cfg, comms, w, state, args, source: str, sync):
    """The tutorial's loop (teacher inside every width's forward, one all-reduce per width) on the same
    batches, with the same per-step seeds."""
    import paddle

    from dynabert.data.batching import to_tensors
    from dynabert.model import pretrained
    from dynabert.train import bench_step as B
    from dynabert.train.loop import step_seed

    if bench_report.ROOT not in sys.path:  # benchmarks/ is not installed; it is in the checkout
        sys.path.insert(0, bench_report.ROOT)
    from benchmarks import seed_reference

    if sync is not None:
        seed_reference.SYNC = sync  # our own benchmark module: time its phases with the device drained
    opt, total = cfg.compress.optim, args.warmup + args.steps
    ref = seed_reference.SeedReference(
        lambda: pretrained.load_model(source, w.num_classes, cfg.model.dropout, seed=cfg.run.seed), state,
        sorted(cfg.compress.widths, reverse=True), cfg.compress.lambda_distill, cfg.compress.lambda_logit,
        comms=comms, learning_rate=opt.learning_rate, total_steps=total, warmup_proportion=opt.warmup_ratio,
        weight_decay=opt.weight_decay)
    ref.train()

    def step(batch, index):
        paddle.seed(step_seed(cfg.run.seed, comms.rank, index))
        ref.step(to_tensors(batch))
        return {}

    return B.measure(step, B.global_batches(w, cfg, comms), warmup=args.warmup, steps=args.steps, sync=sync,
                     barrier=comms.barrier, on_step=_progress(comms, "reference", args.warmup, total))


def _progress(comms, side: str, warmup: int, total: int):
    def show(index: int, seconds: float) -> None:
        if comms.is_main:
            kind = "warm-up" if index < warmup else "timed"
            print(f"bench world size {comms.world_size}: {side} step {index + 1}/{total} ({kind}) {seconds:.3f} s",
                  flush=True)
    return show


def process_facts() -> dict:
    """Where this rank ran and on what software: for the report's machine description."""
    import paddle

    device = str(paddle.get_device())
    cuda, cudnn = paddle.version.cuda(), paddle.version.cudnn()
    facts = {"host": socket.gethostname(), "device": device, "paddle": paddle.__version__,
             "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
             "cuda": None if cuda in (None, "False") else cuda, "cudnn": None if cudnn in (None, "False") else cudnn}
    if "gpu" in device:
        facts["device_name"] = paddle.device.cuda.get_device_name()
        try:
            done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=30)
            facts["gpu_driver"] = done.stdout.splitlines()[0].strip() if done.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, IndexError):
            facts["gpu_driver"] = None
    return facts


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        return worker_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse already printed
        return int(e.code or 0)
    args.argv = argv
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # a scheduler's kill stops the job too
    try:
        return _bench(args, sys.stdout, sys.stderr)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("interrupted: stopped the launcher and all ranks", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.path.insert(0, bench_report.ROOT)  # also as a script path: the project importable
    sys.exit(main())
