"""Step time, all-reduce traffic and step-0 equivalence: project vs our re-implementation of the tutorial.

    python -m benchmarks.step_time --out DIR --tag 1proc [--teacher-state F] [--smoke]
    python -m paddle.distributed.launch --nproc_per_node 2 python -m benchmarks.step_time --out DIR --tag 2proc

(run_all builds these command lines; thread counts come from the environment it sets.)

Both sides are built from the same (importance-reordered) teacher state, and are checked to hold
identical student weights before anything runs. In one process run:

1. step 0, dropout off (eval mode), on a batch WITHOUT padding (``workload.unpadded_batch``): the per-width
   loss terms (rep, logit, loss) and the accumulated (and, with >1 process, averaged) gradients of the two
   sides are compared; then each side takes its optimizer step (this pair doubles as the warm-up and is
   not timed). The project's hidden-state loss averages over real tokens, the tutorial's over every
   position (dynabert/train/losses.py), so the two agree only where nothing is padding;
2. one untimed train-mode warm-up pair, then alternating A/B repeats (A = project, B = reference), train
   mode (dropout on), on a fixed global batch of real SST-2 rows (random ids in smoke mode) padded to
   --seq-len tokens;
3. alternating A/B steps on real SST-2 batches with dynamic padding (GlobalBatches, as training uses),
   for samples/s and tokens/s.

Project step = ``dynabert.train.bench_step.CompressStep``, the step `dynabert-bench` measures: the compress
stage's ``supernet_step``, then the trainer's own ``Optimization`` (one fused gradient all-reduce, the
finiteness verdict, AdamW with clipping, the schedule), timed by phase. All-reduce calls and bytes are
read from the counters ``PaddleCollectives`` keeps (zero in one process: there is no all-reduce).
"""
import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  (no paddle yet)

EQUIVALENCE_LEN = 16  # tokens per row of the unpadded step-0 batch (most SST-2 rows are shorter than 64)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks.step_time", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tag", default="1proc", help="result file suffix: step_time_<tag>.json")
    p.add_argument("--teacher-state", default=None, help="reordered teacher weights (benchmarks.importance_bench)")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--global-batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="timed A/B pairs on the fixed batch")
    p.add_argument("--dynamic-steps", type=int, default=3, help="A/B pairs on dynamically padded batches")
    p.add_argument("--threads", type=int, default=None, help="default: from OMP_NUM_THREADS, else all CPUs")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    common.apply_threads(args.threads)
    run(args)


def run(args):
    args.load_start = common.load_average()
    ab = build_sides(args)
    equivalence = step0equivalence_report(ab, args)
    timed_repeats(ab, args)
    dynamic_steps(ab, args)
    report(ab, args, equivalence)


# --------------------------------------------------------------------------------------------------
@dataclass
class Sides:
    """Both sides of the A/B comparison and what measuring them needs."""
    comms: object
    sync: Callable[[], None]
    workload: object
    project: object    # dynabert.train.bench_step.CompressStep
    reference: object  # benchmarks.seed_reference.SeedReference
    param_bytes: int
    param_count: int
    project_steps: int = 0
    fixed: Dict = field(default_factory=dict)   # this rank's fixed batch (numpy), for the FLOP count
    record: Dict[str, List[dict]] = field(default_factory=lambda: {"project": [], "reference": []})

    def counters(self):
        return getattr(self.comms, "all_reduce_calls", 0), getattr(self.comms, "all_reduce_bytes", 0)

    def measured(self, fn):
        """fn's result, its seconds (the ranks start together, the device drained at both ends) and the
        all-reduce calls and bytes it made."""
        self.comms.barrier()
        calls, nbytes = self.counters()
        self.sync()
        start = time.perf_counter()
        result = fn()
        self.sync()
        seconds = time.perf_counter() - start
        after = self.counters()
        return result, seconds, after[0] - calls, after[1] - nbytes


def build_sides(args) -> Sides:
    import numpy as np
    import paddle

    from benchmarks import seed_reference
    from benchmarks import workload as W
    from benchmarks.equivalence import compare_named
    from dynabert.train.bench_step import CompressStep, device_sync
    from launcher.fleet_setup import init_collectives

    if args.device == "gpu" and not paddle.is_compiled_with_cuda():
        raise SystemExit("--device gpu needs paddlepaddle-gpu")
    comms = init_collectives()
    if args.device == "cpu":
        paddle.set_device("cpu")
    else:
        paddle.set_device(f"gpu:{int(os.environ.get('FLAGS_selected_gpus', '0').split(',')[0])}")
    sync = device_sync() or (lambda: None)
    seed_reference.SYNC = sync
    w = W.load_workload(args.smoke, dev_limit=8)
    state = W.load_state(args.teacher_state) if args.teacher_state else None
    paddle.seed(W.SEED + 1 + comms.rank)
    teacher = W.new_teacher(w, state)
    if state is None:
        state = {k: v.numpy() for k, v in teacher.state_dict().items()}
    project = CompressStep(teacher, W.bench_config(args.global_batch), comms, regression=False, steps=1000,
                           sync=device_sync())
    ref = seed_reference.SeedReference(lambda: W.new_teacher(w), state, W.WIDTHS, W.LAMBDA_DISTILL,
                                       W.LAMBDA_LOGIT, comms=comms, learning_rate=5e-5, total_steps=1000)
    same = compare_named({k: v.numpy() for k, v in project.supernet.model.state_dict().items()},
                          {k: v.numpy() for k, v in ref.student.state_dict().items()})
    if same["max_abs_diff"] != 0.0 or same["missing"]:
        raise RuntimeError(f"project and reference students do not start from the same weights: {same}")
    params = project.opt.params
    return Sides(comms, sync, w, project, ref, W.parameter_bytes(params),
                 int(sum(int(np.prod(p.shape)) for p in params)))


def project_timing(phases: Dict[str, float], widths, world: int) -> dict:
    """The PhaseTimer's names in the layout the reference's timing uses."""
    from dynabert.train.bench_step import ALL_REDUCE, OPTIMIZER
    return {"teacher": phases.get("teacher", 0.0), "widths": {str(wd): phases[f"width {wd}"] for wd in widths},
            "allreduce": {"fused": phases[ALL_REDUCE]} if world > 1 else {}, "optimizer": phases[OPTIMIZER]}


def ab_pair(ab: Sides, batch, phase: str) -> None:
    """One project step, then one reference step, on the same batch (numpy: each side copies it in)."""
    from dynabert.data.batching import to_tensors

    index = ab.project_steps
    ab.project_steps += 1
    phases, seconds, calls, nbytes = ab.measured(lambda: ab.project(batch, index))
    timing = project_timing(phases, ab.project.supernet.widths, ab.comms.world_size)
    ab.record["project"].append(_row(phase, seconds, calls, nbytes, timing, batch))
    _, seconds, calls, nbytes = ab.measured(lambda: ab.reference.step(to_tensors(batch)))
    ab.record["reference"].append(_row(phase, seconds, calls, nbytes, ab.reference.last_timing, batch))


def step0equivalence_report(ab: Sides, args) -> dict:
    """Step 0 in eval mode on an unpadded batch: loss terms and averaged gradients of both sides."""
    from benchmarks import seed_reference
    from benchmarks import workload as W
    from benchmarks.equivalence import equivalence_report
    from dynabert.data.batching import to_tensors
    from dynabert.train.bench_step import OPTIMIZER

    rank, world = ab.comms.rank, ab.comms.world_size
    batch = W.unpadded_batch(ab.workload, args.global_batch, min(EQUIVALENCE_LEN, args.seq_len), rank, world)
    tensors = to_tensors(batch)
    ab.project.supernet.eval()
    ab.reference.eval()

    def project_backward():
        losses = ab.project.forward_backward(tensors, ab.project_steps)
        return losses, ab.project.reduce()

    (lp, fused), sec_p, calls_p, bytes_p = ab.measured(project_backward)
    grads_p = seed_reference.grads_by_name(ab.project.supernet.model)
    lr_, sec_r, calls_r, bytes_r = ab.measured(lambda: ab.reference.forward_backward(tensors))
    grads_r = seed_reference.grads_by_name(ab.reference.student)
    equivalence = equivalence_report(lp, lr_, grads_p, grads_r)
    mask = batch["attention_mask"]
    equivalence["batch"] = {"rows_per_rank": int(mask.shape[0]), "tokens_per_row": int(mask.shape[1]),
                            "padding": int(mask.size - mask.sum())}
    ab.project.update(fused)
    ab.project_steps += 1
    phases = ab.project.timer.take()
    timing = project_timing(phases, ab.project.supernet.widths, world)
    ab.record["project"].append(_row("step0", sec_p + phases[OPTIMIZER], calls_p, bytes_p, timing, batch))
    ab.reference.optimizer_step()
    ab.record["reference"].append(_row("step0", sec_r + ab.reference.last_timing["optimizer"], calls_r, bytes_r,
                                       ab.reference.last_timing, batch))
    return equivalence


def timed_repeats(ab: Sides, args) -> None:
    """Train mode: one untimed pair (the first step after the mode switch pays one-off costs, seen: +40%),
    then ``--repeats`` alternating pairs on the fixed batch."""
    from benchmarks import workload as W

    ab.project.supernet.train()
    ab.reference.train()
    fixed = W.fixed_batch(ab.workload, args.global_batch, args.seq_len, ab.comms.rank, ab.comms.world_size)
    ab.fixed = fixed
    ab_pair(ab, fixed, "warmup")
    for _ in range(args.repeats):
        ab_pair(ab, fixed, "fixed")


def dynamic_steps(ab: Sides, args) -> None:
    """Real batches padded to their longest row (the same batch for A and B)."""
    from benchmarks import workload as W
    from dynabert.data.batching import GlobalBatches

    w = ab.workload
    batches = GlobalBatches(w.train, args.global_batch, W.SEED, ab.comms.rank, ab.comms.world_size,
                            w.pad_token_id, None)
    for _, batch in zip(range(args.dynamic_steps), batches.epoch(0)):
        ab_pair(ab, batch, "dynamic")


def report(ab: Sides, args, equivalence: dict) -> None:
    import paddle

    from benchmarks.seed_reference import paddle_defaults
    from dynabert.model.compat import STRIDE_FLAG
    from dynabert.train.bench_step import matmul_peak, peak_shapes

    # MFU's numerator: the project step's model FLOPs on this rank's fixed batch (dynabert/model/flops.py);
    # its denominator: the matmul rate this rank reaches now, at a large square and the model's own shapes
    shapes = peak_shapes(ab.project.shape, tokens=int(ab.fixed["input_ids"].size))
    peak = {kind: matmul_peak(s, min_seconds=0.3 if args.smoke else 2.0, sync=ab.sync) for kind, s in shapes.items()}
    flags = {"project": paddle.get_flags([STRIDE_FLAG])}
    with paddle_defaults():
        flags["reference"] = paddle.get_flags([STRIDE_FLAG])
    local = {"rank": ab.comms.rank, "record": ab.record, "equivalence": equivalence,
             "peak_rss_bytes": common.peak_rss_bytes(), "param_bytes": ab.param_bytes,
             "param_count": ab.param_count, "step_flops": ab.project.flops(ab.fixed), "matmul_peak_flops": peak,
             "runtime_flags": flags}
    gathered = ab.comms.all_gather_object(local)
    if ab.comms.rank == 0:
        result = summarise(args, ab.workload, gathered, ab.comms.world_size)
        common.write_result(args.out, f"step_time_{args.tag}", result, markdown(result))
        print(markdown(result), flush=True)
    ab.comms.shutdown()  # barrier, then leave the group together (as launcher/worker.py does)


def _row(phase, seconds, calls, nbytes, timing, batch):
    mask = batch["attention_mask"]
    mask = mask.numpy() if hasattr(mask, "numpy") else mask
    return {"phase": phase, "seconds": seconds, "allreduce_calls": calls, "allreduce_bytes": nbytes,
            "samples": int(mask.shape[0]), "tokens": int(mask.sum()), "padded_tokens": int(mask.size),
            "seq_len": int(mask.shape[1]),
            "timing": {k: ({str(kk): vv for kk, vv in v.items()} if isinstance(v, dict) else v)
                       for k, v in timing.items()}}


# --------------------------------------------------------------------------------------------------
def summarise(args, w, ranks, world):
    """Global figures from every rank's records. A step's time is the slowest rank's (the all-reduces
    synchronise the ranks anyway)."""
    from benchmarks.workload import WIDTHS
    med = common.median
    sides = {}
    for side in ("project", "reference"):
        rows = [r["record"][side] for r in ranks]
        n = len(rows[0])
        steps = []
        for i in range(n):
            per_rank = [rows[r][i] for r in range(len(rows))]
            steps.append({
                "phase": per_rank[0]["phase"],
                "seconds": max(x["seconds"] for x in per_rank),
                "samples": sum(x["samples"] for x in per_rank),
                "tokens": sum(x["tokens"] for x in per_rank),
                "padded_tokens": sum(x["padded_tokens"] for x in per_rank),
                "seq_len": per_rank[0]["seq_len"],
                "allreduce_calls": per_rank[0]["allreduce_calls"],
                "allreduce_bytes": per_rank[0]["allreduce_bytes"],
                "timing": per_rank[0]["timing"],
            })
        fixed = [s for s in steps if s["phase"] == "fixed"]
        dyn = [s for s in steps if s["phase"] == "dynamic"]
        counted = [s for s in steps if s["allreduce_calls"] is not None and s["phase"] != "step0"]
        per_width = {str(wd): med(s["timing"]["widths"][str(wd)] for s in fixed) for wd in WIDTHS}
        dyn_seconds = sum(s["seconds"] for s in dyn)
        sides[side] = {
            "median_step_seconds": med(s["seconds"] for s in fixed),
            "step_seconds": [s["seconds"] for s in fixed],
            "samples_per_s_fixed": args.global_batch / med(s["seconds"] for s in fixed),
            "median_teacher_seconds": med(s["timing"]["teacher"] for s in fixed),
            "median_width_seconds": per_width,
            "median_allreduce_seconds": med(sum(s["timing"]["allreduce"].values()) for s in fixed),
            "median_optimizer_seconds": med(s["timing"]["optimizer"] for s in fixed),
            "allreduce_calls_per_step": sorted({s["allreduce_calls"] for s in counted}),
            "allreduce_bytes_per_step": sorted({s["allreduce_bytes"] for s in counted}),
            "dynamic": {
                "steps": len(dyn),
                "seq_lens": [s["seq_len"] for s in dyn],
                "seconds": dyn_seconds,
                "samples_per_s": sum(s["samples"] for s in dyn) / dyn_seconds if dyn else None,
                "tokens_per_s": sum(s["tokens"] for s in dyn) / dyn_seconds if dyn else None,
                "padded_tokens_per_s": sum(s["padded_tokens"] for s in dyn) / dyn_seconds if dyn else None,
            },
            "steps": steps,
        }
    p, r = sides["project"], sides["reference"]
    param_bytes = ranks[0]["param_bytes"]
    # A/B pairs: project step i and reference step i ran back to back, so their ratio sees the same
    # machine state; the median of the pair ratios is the drift-robust estimate.
    pair_ratios = [a / b for a, b in zip(p["step_seconds"], r["step_seconds"])]
    step_flops = sum(x["step_flops"] for x in ranks)
    achieved = step_flops / p["median_step_seconds"]
    peaks = {kind: sum(x["matmul_peak_flops"][kind] for x in ranks) for kind in ranks[0]["matmul_peak_flops"]}
    return {
        "benchmark": "step_time",
        "tag": args.tag,
        "processes": world,
        "threads_per_process": int(os.environ.get("OMP_NUM_THREADS", "0")),
        "device": args.device,
        "smoke": args.smoke,
        "model": w.model_name,
        "data": w.data_source,
        "fixed_batch": {"global_batch": args.global_batch, "per_rank": args.global_batch // world,
                        "seq_len": args.seq_len,
                        "content": ("random token ids" if args.smoke else
                                    "real SST-2 training rows (seeded draw), padded to seq_len")},
        "widths": list(WIDTHS),
        "repeats": args.repeats,
        "order": "step0 (project, reference; equivalence, eval mode, untimed), one train-mode warm-up pair "
                 "(untimed), then A/B/A/B... on the fixed batch, then A/B on dynamically padded batches",
        "ratio_project_over_reference": p["median_step_seconds"] / r["median_step_seconds"],
        "pair_ratios": pair_ratios,
        "median_pair_ratio": common.median(pair_ratios),
        "ratio_dynamic": (p["dynamic"]["seconds"] / r["dynamic"]["seconds"]) if p["dynamic"]["steps"] else None,
        "mfu": {"step_flops": step_flops, "flops_per_s": achieved, "matmul_peak_flops": peaks,
                "fraction": {kind: achieved / v for kind, v in peaks.items()},
                "note": "project step: teacher forward + every width's forward and backward "
                        "(docs/benchmarking.md); peak: best matmul rate each rank measured, summed"},
        "runtime_flags": ranks[0]["runtime_flags"],
        "param_count": ranks[0]["param_count"],
        "param_bytes": param_bytes,
        "allreduce": {
            "project_calls_per_step": p["allreduce_calls_per_step"],
            "reference_calls_per_step": r["allreduce_calls_per_step"],
            "project_bytes_per_step": p["allreduce_bytes_per_step"],
            "reference_bytes_per_step": r["allreduce_bytes_per_step"],
            "project_bytes_over_param_bytes": [b / param_bytes for b in p["allreduce_bytes_per_step"]],
            "reference_bytes_over_param_bytes": [b / param_bytes for b in r["allreduce_bytes_per_step"]],
            "counted_steps": len([s for s in p["steps"] if s["phase"] != "step0"]),
        },
        "equivalence": {"per_rank": [x["equivalence"] for x in ranks],
                        "passed": all(x["equivalence"]["passed"] for x in ranks)},
        "peak_rss_bytes_per_rank": [x["peak_rss_bytes"] for x in ranks],
        "load_average_at_start": getattr(args, "load_start", None),
        "project": p,
        "reference": r,
        "machine": common.machine_info(args.device),
    }


def markdown(res) -> str:
    p, r = res["project"], res["reference"]
    eq = res["equivalence"]["per_rank"][0]
    lines = [f"# Step time, {res['processes']} process(es) x {res['threads_per_process']} thread(s), {res['device']}",
             "",
             f"Model: {res['model']}. Fixed batch: {res['fixed_batch']['global_batch']} x "
             f"{res['fixed_batch']['seq_len']} tokens ({res['fixed_batch']['per_rank']} per rank; "
             f"{res['fixed_batch']['content']}). Widths {res['widths']}. {res['repeats']} alternating A/B repeats.",
             f"Data: {res['data']}.", ""]
    rows = []
    for name, s in (("project", p), ("reference (tutorial)", r)):
        rows.append([name, s["median_step_seconds"], s["samples_per_s_fixed"], s["median_teacher_seconds"],
                     " / ".join(f"{s['median_width_seconds'][str(wd)]:.2f}" for wd in res["widths"]),
                     s["median_allreduce_seconds"], s["median_optimizer_seconds"],
                     ",".join(map(str, s["allreduce_calls_per_step"])),
                     ",".join(common.fmt_bytes(b) for b in s["allreduce_bytes_per_step"])])
    lines.append(common.md_table(["side", "median step s", "samples/s", "teacher s", "per-width s (1.0/.75/.5/.25)",
                                  "all-reduce s", "optimizer s", "all-reduces/step", "bytes/step"], rows))
    lines += ["", "Teacher: project once under no_grad; reference inside every width's OFA forward (sum of 4). The "
              "reference's per-width times include its teacher run. Optimizer: project = non-finite guard + AdamW "
              "with global-norm clipping (as dynabert.train.loop.train); reference = AdamW without clipping "
              "(PaddleNLP's "
              "OFA example). All-reduce: including the wait for the slower rank.",
              "", f"**Ratio project/reference (median step): {res['ratio_project_over_reference']:.3f}**; "
              "median of the "
              f"{len(res['pair_ratios'])} A/B pair ratios: {res['median_pair_ratio']:.3f} "
              f"(pairs: {', '.join(f'{x:.3f}' for x in res['pair_ratios'])})", ""]
    if p["dynamic"]["steps"]:
        lines.append(f"Dynamic padding ({p['dynamic']['steps']} training batches padded to their longest row, lengths "
                     f"{p['dynamic']['seq_lens']}):")
        lines.append(common.md_table(["side", "samples/s", "tokens/s (real)", "tokens/s (padded)"],
                                     [[n, s["dynamic"]["samples_per_s"], s["dynamic"]["tokens_per_s"],
                                       s["dynamic"]["padded_tokens_per_s"]]
                                      for n, s in (("project", p), ("reference", r))]))
        lines.append(f"\nRatio project/reference (dynamic): {res['ratio_dynamic']:.3f}")
    m = res["mfu"]
    lines += ["", f"Model FLOPs of the project's step: {m['step_flops'] / 1e9:.1f} GFLOP; achieved "
              f"{m['flops_per_s'] / 1e9:.1f} GFLOP/s; **MFU {m['fraction']['model']:.0%} of the matmul rate at the "
              f"model's shapes** ({m['matmul_peak_flops']['model'] / 1e9:.1f} GFLOP/s, measured here), "
              f"{m['fraction']['square']:.0%} of the 2048^3 rate "
              f"({m['matmul_peak_flops']['square'] / 1e9:.1f} GFLOP/s).",
              f"Runtime flags: project {res['runtime_flags']['project']} (its entry points turn stride kernels off "
              f"on CPUs, defect 15); reference {res['runtime_flags']['reference']} (Paddle's defaults, as the "
              "tutorial runs)."]
    eq_batch = eq.get("batch", {})
    lines += ["", f"Step-0 equivalence (dropout off, rank 0, an unpadded batch of {eq_batch.get('rows_per_rank')} x "
              f"{eq_batch.get('tokens_per_row')} tokens per rank: the project averages the hidden-state loss over real "
              "tokens, the tutorial over every position): loss terms max |diff| {eq['loss_max_abs_diff']:.3g}, "
              f"gradients max |diff| {eq['grad_max_abs_diff']:.3g} (max |grad| {eq['grad_max_abs']:.3g}); "
              f"tolerance {eq['tolerance']}: {'PASSED' if res['equivalence']['passed'] else 'FAILED'}",
              f"Parameters: {res['param_count']:,} ({common.fmt_bytes(res['param_bytes'])}); peak RSS per rank "
              f"(both sides in one process): {', '.join(common.fmt_bytes(b) for b in res['peak_rss_bytes_per_rank'])}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
