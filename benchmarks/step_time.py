"""Step time, all-reduce traffic and step-0 equivalence: project vs our re-implementation of the tutorial.

    python -m benchmarks.step_time --out DIR --tag 1proc [--teacher-state F] [--smoke]
    python -m paddle.distributed.launch --nproc_per_node 2 python -m benchmarks.step_time --out DIR --tag 2proc

(run_all builds these command lines; thread counts come from the environment it sets.)

Both sides are built from the same (importance-reordered) teacher state, and are checked to hold
identical student weights before anything runs. In one process run:

1. step 0, dropout off (eval mode), same batch: the per-width loss terms (rep, logit, loss) and the
   accumulated (and, with >1 process, averaged) gradients of the two sides are compared; then each side
   takes its optimizer step (this pair doubles as the warm-up and is not timed);
2. one untimed train-mode warm-up pair, then alternating A/B repeats (A = project, B = reference), train
   mode (dropout on), on a fixed global batch
   of real SST-2 rows (random ids in smoke mode) padded to --seq-len tokens;
3. alternating A/B steps on real SST-2 batches with dynamic padding (GlobalBatches, as training uses),
   for samples/s and tokens/s.

Project step = ``dynabert.train_step.supernet_step`` + one fused gradient all-reduce
(``Collectives.all_reduce_gradients``) + AdamW step, exactly the body of ``dynabert.trainer.train``.
All-reduce calls and bytes are counted by wrapping ``paddle.distributed.all_reduce`` in this process.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  (no paddle yet)


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


# --------------------------------------------------------------------------------------------------
def run(args):
    args.load_start = common.load_average()
    import dynabert  # noqa: F401
    import numpy as np
    import paddle
    import paddle.distributed as dist

    from benchmarks import seed_reference, workload as W
    from dynabert.batching import GlobalBatches, to_tensors
    from dynabert.config import OptimConfig
    from dynabert.supernet import Supernet
    from dynabert.train_step import HiddenStates, supernet_step
    from dynabert import trainer as trainer_module
    from dynabert.trainer import make_optimizer
    from launcher.fleet_setup import init_collectives

    counts = {"calls": 0, "bytes": 0}
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(tensor, *a, **k):  # benchmark-only instrumentation of this process
        counts["calls"] += 1
        counts["bytes"] += int(tensor.numel()) * tensor.element_size()
        return real_all_reduce(tensor, *a, **k)

    dist.all_reduce = counting_all_reduce
    if args.device == "gpu" and not paddle.is_compiled_with_cuda():
        raise SystemExit("--device gpu needs paddlepaddle-gpu")
    comms = init_collectives()
    if args.device == "cpu":
        paddle.set_device("cpu")
    on_gpu = args.device == "gpu"
    if on_gpu:
        paddle.set_device(f"gpu:{int(os.environ.get('FLAGS_selected_gpus', '0').split(',')[0])}")

    def sync():
        if on_gpu:
            paddle.device.cuda.synchronize()

    seed_reference.SYNC = sync
    rank, world = comms.rank, comms.world_size

    w = W.load_workload(args.smoke, dev_limit=8)
    state = W.load_state(args.teacher_state) if args.teacher_state else None
    paddle.seed(W.SEED + 1 + rank)

    # ---- the project: teacher once per batch, every width, ONE fused all-reduce, AdamW -------------
    teacher = W.new_teacher(w, state)
    if state is None:
        state = {k: v.numpy() for k, v in teacher.state_dict().items()}
    sn = Supernet(teacher, W.WIDTHS)
    s_states, t_states = HiddenStates(sn.model), HiddenStates(teacher)
    named = list(sn.model.named_parameters())
    params = [p for _, p in named]
    optim_cfg = OptimConfig(batch_size=args.global_batch, learning_rate=5e-5)
    optimizer, schedule = make_optimizer(named, optim_cfg, 1000)

    marks = []
    set_width = sn.set_width

    def timed_set_width(width):  # measurement only: where each width's forward+backward starts
        sync()
        marks.append(time.perf_counter())
        set_width(width)

    sn.set_width = timed_set_width

    def project_forward_backward(batch):
        marks.clear()
        sync()
        t0 = time.perf_counter()
        losses = supernet_step(sn, s_states, teacher, t_states, batch, sn.widths, W.LAMBDA_DISTILL,
                               W.LAMBDA_LOGIT, False)
        sync()
        t1 = time.perf_counter()
        comms.all_reduce_gradients(params)
        sync()
        t2 = time.perf_counter()
        bounds = marks + [t1]
        timing = {"teacher": marks[0] - t0,
                  "widths": {wd: bounds[i + 1] - bounds[i] for i, wd in enumerate(sn.widths)},
                  "allreduce": {"fused": t2 - t1} if world > 1 else {}}
        return losses, timing

    # The rest of dynabert.trainer.train's step body: the non-finite-gradient guard (if this version of the
    # trainer has it) before AdamW (gradient clipping happens inside AdamW).
    gradients_finite = getattr(trainer_module, "gradients_finite", None)

    def project_optimizer_step():
        start = time.perf_counter()
        if gradients_finite is None or gradients_finite(params):
            optimizer.step()
        schedule.step()
        optimizer.clear_grad()
        sync()
        return time.perf_counter() - start

    # ---- the reference: our re-implementation of the tutorial ------------------------------------
    ref = seed_reference.SeedReference(lambda: W.new_teacher(w), state, W.WIDTHS, W.LAMBDA_DISTILL,
                                       W.LAMBDA_LOGIT, comms=comms, learning_rate=5e-5, total_steps=1000)

    same = _compare_named({k: v.numpy() for k, v in sn.model.state_dict().items()},
                          {k: v.numpy() for k, v in ref.student.state_dict().items()})
    if same["max_abs_diff"] != 0.0 or same["missing"]:
        raise RuntimeError(f"project and reference students do not start from the same weights: {same}")

    def measured(fn):
        comms.barrier()
        before = dict(counts)
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        seconds = time.perf_counter() - start
        return result, seconds, counts["calls"] - before["calls"], counts["bytes"] - before["bytes"]

    record = {"project": [], "reference": []}

    def project_step(batch, phase):
        (losses, timing), seconds, calls, nbytes = measured(
            lambda: _with_opt(project_forward_backward(batch), project_optimizer_step))
        record["project"].append(_row(phase, seconds, calls, nbytes, timing, batch))
        return losses

    def reference_step(batch, phase):
        def go():
            losses = ref.forward_backward(batch)
            ref.optimizer_step()
            return losses, ref.last_timing
        (losses, timing), seconds, calls, nbytes = measured(go)
        record["reference"].append(_row(phase, seconds, calls, nbytes, timing, batch))
        return losses

    fixed = to_tensors(W.fixed_batch(w, args.global_batch, args.seq_len, rank, world))

    # 1. step 0: equivalence (dropout off), also the warm-up of both sides
    sn.eval()
    ref.eval()
    (lp, timing_p), sec_p, calls_p, bytes_p = measured(lambda: project_forward_backward(fixed))
    grads_p = seed_reference.grads_by_name(sn.model)
    lr_, sec_r, calls_r, bytes_r = measured(lambda: ref.forward_backward(fixed))
    grads_r = seed_reference.grads_by_name(ref.student)
    equivalence = _equivalence(lp, lr_, grads_p, grads_r)
    timing_p["optimizer"] = project_optimizer_step()
    record["project"].append(_row("step0", sec_p + timing_p["optimizer"], calls_p, bytes_p, timing_p, fixed))
    ref.optimizer_step()
    record["reference"].append(_row("step0", sec_r + ref.last_timing["optimizer"], calls_r, bytes_r,
                                    ref.last_timing, fixed))

    # 2. timed A/B repeats on the fixed batch, train mode
    sn.train()
    ref.train()
    # one untimed train-mode pair: the first step after the mode switch pays one-off costs (seen: +40%)
    project_step(fixed, "warmup")
    reference_step(fixed, "warmup")
    for _ in range(args.repeats):
        project_step(fixed, "fixed")
        reference_step(fixed, "fixed")

    # 3. dynamic padding on real batches (the same batch for A and B)
    batches = GlobalBatches(w.train, args.global_batch, W.SEED, rank, world, w.pad_token_id, None)
    for i, batch in zip(range(args.dynamic_steps), batches.epoch(0)):
        tb = to_tensors(batch)
        project_step(tb, "dynamic")
        reference_step(tb, "dynamic")

    local = {"rank": rank, "record": record, "equivalence": equivalence,
             "peak_rss_bytes": common.peak_rss_bytes(),
             "param_bytes": W.parameter_bytes(params), "param_count": int(sum(int(np.prod(p.shape)) for p in params))}
    gathered = comms.all_gather_object(local)
    if rank == 0:
        result = summarise(args, w, gathered, world)
        name = f"step_time_{args.tag}"
        common.write_result(args.out, name, result, markdown(result))
        print(markdown(result), flush=True)
    comms.barrier()


def _with_opt(fb_result, opt_fn):
    losses, timing = fb_result
    timing["optimizer"] = opt_fn()
    return losses, timing


def _row(phase, seconds, calls, nbytes, timing, batch):
    mask = batch["attention_mask"].numpy()
    return {"phase": phase, "seconds": seconds, "allreduce_calls": calls, "allreduce_bytes": nbytes,
            "samples": int(mask.shape[0]), "tokens": int(mask.sum()), "padded_tokens": int(mask.size),
            "seq_len": int(mask.shape[1]),
            "timing": {k: ({str(kk): vv for kk, vv in v.items()} if isinstance(v, dict) else v)
                       for k, v in timing.items()}}


def _compare_named(a, b):
    import numpy as np
    missing = sorted(set(a) ^ set(b))
    diffs = [float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).max())
             for k in a if k in b and a[k] is not None and b[k] is not None and np.size(a[k])]
    none_mismatch = [k for k in a if k in b and (a[k] is None) != (b[k] is None)]
    return {"max_abs_diff": max(diffs) if diffs else 0.0, "missing": missing + none_mismatch}


def _equivalence(lp, lr, gp, gr, tol=1e-5):
    import numpy as np
    terms = {}
    worst = 0.0
    for wd in lp:
        terms[str(wd)] = {}
        for k in ("rep", "logit", "loss"):
            a, b = float(lp[wd][k]), float(lr[wd][k])
            terms[str(wd)][k] = {"project": a, "reference": b, "abs_diff": abs(a - b)}
            worst = max(worst, abs(a - b))
    cmp = _compare_named(gp, gr)
    max_grad = max(float(np.abs(g).max()) for g in gp.values() if g is not None)
    rel = max((float(np.abs(gp[k] - gr[k]).max()) / max(float(np.abs(gp[k]).max()), 1e-30))
              for k in gp if gp[k] is not None and gr.get(k) is not None)
    return {"tolerance": tol, "loss_terms": terms, "loss_max_abs_diff": worst,
            "grad_max_abs_diff": cmp["max_abs_diff"], "grad_max_rel_diff": rel, "grad_max_abs": max_grad,
            "grad_mismatched_names": cmp["missing"],
            "passed": bool(worst <= tol and cmp["max_abs_diff"] <= tol and not cmp["missing"])}


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
              "with global-norm clipping (as dynabert.trainer.train); reference = AdamW without clipping (PaddleNLP's "
              "OFA example). All-reduce: including the wait for the slower rank.",
              "", f"**Ratio project/reference (median step): {res['ratio_project_over_reference']:.3f}**; median of the "
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
    lines += ["", f"Step-0 equivalence (dropout off, rank 0): loss terms max |diff| {eq['loss_max_abs_diff']:.3g}, "
              f"gradients max |diff| {eq['grad_max_abs_diff']:.3g} (max |grad| {eq['grad_max_abs']:.3g}); "
              f"tolerance {eq['tolerance']}: {'PASSED' if res['equivalence']['passed'] else 'FAILED'}",
              f"Parameters: {res['param_count']:,} ({common.fmt_bytes(res['param_bytes'])}); peak RSS per rank "
              f"(both sides in one process): {', '.join(common.fmt_bytes(b) for b in res['peak_rss_bytes_per_rank'])}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
