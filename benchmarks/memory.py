"""Peak memory of one training process, one side only: project or reference (our tutorial loop).

    python -m benchmarks.memory --side project|reference --out DIR [--teacher-state F] [--smoke]

Each side runs in its own fresh process (the allocator keeps what an earlier phase freed, so two sides in
one process cannot be told apart). Resident set from /proc/self/status: VmRSS after the models and the
optimizer are built, and VmHWM (the peak) after ``--steps`` training steps on the fixed batch, train mode.
Both sides hold one teacher and one student; on GPU also paddle's max allocated device memory. The
project's step is ``dynabert.train.bench_step.CompressStep`` (the compress step and the trainer's Optimization).
Writes ``memory_<side>.json``; run_all merges the two into memory.json/.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402


def parse_args(argv=None):
    p = common.parser("benchmarks.memory", __doc__, batch=True)
    p.add_argument("--side", choices=("project", "reference"), required=True)
    p.add_argument("--teacher-state", default=None)
    p.add_argument("--steps", type=int, default=2)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    common.apply_threads(args.threads)
    import paddle

    from benchmarks import workload as W
    from dynabert.data.batching import to_tensors

    paddle.set_device("gpu" if args.device == "gpu" else "cpu")
    rss_start = common.rss_bytes()
    w = W.load_workload(args.smoke, train_limit=512, dev_limit=8)
    state = W.load_state(args.teacher_state) if args.teacher_state else None
    batch = W.fixed_batch(w, args.global_batch, args.seq_len)  # numpy: each side copies it in
    paddle.seed(W.SEED + 1)

    if args.side == "project":  # the step dynabert-bench measures: supernet_step + the trainer's Optimization
        from dynabert.collectives import SingleProcess
        from dynabert.model.compat import contiguous_views_on_cpu
        from dynabert.train.bench_step import CompressStep

        contiguous_views_on_cpu()  # as the project's entry points do (defect 15)

        project = CompressStep(W.new_teacher(w, state), W.bench_config(args.global_batch), SingleProcess(),
                               regression=False, steps=1000)
        step = lambda index: project(batch, index)  # noqa: E731
    else:
        from benchmarks.seed_reference import SeedReference

        ref = SeedReference(lambda: W.new_teacher(w), state, W.WIDTHS, W.LAMBDA_DISTILL, W.LAMBDA_LOGIT)
        ref.train()
        tensors = to_tensors(batch)
        step = lambda index: ref.step(tensors)  # noqa: E731

    rss_built = common.rss_bytes()
    peak_built = common.peak_rss_bytes()
    for index in range(args.steps):
        step(index)
    result = {
        "side": args.side,
        "steps": args.steps,
        "batch": [args.global_batch, args.seq_len],
        "rss_after_imports_bytes": rss_start,
        "rss_after_build_bytes": rss_built,
        "peak_rss_before_training_bytes": peak_built,
        "peak_rss_bytes": common.peak_rss_bytes(),
        "rss_after_training_bytes": common.rss_bytes(),
        "training_increment_bytes": common.peak_rss_bytes() - rss_built,
        "gpu_max_allocated_bytes": (paddle.device.cuda.max_memory_allocated() if args.device == "gpu" else None),
        "model": w.model_name,
        "machine": common.machine_info(args.device),
    }
    common.write_json(os.path.join(args.out, f"memory_{args.side}.json"), result)
    print(f"{args.side}: peak RSS {common.fmt_bytes(result['peak_rss_bytes'])}, after build "
          f"{common.fmt_bytes(rss_built)}, training increment {common.fmt_bytes(result['training_increment_bytes'])}",
          flush=True)


def merge(out_dir: str) -> dict:
    """memory.json/.md from memory_project.json and memory_reference.json."""
    import json
    sides = {}
    for side in ("project", "reference"):
        with open(os.path.join(out_dir, f"memory_{side}.json")) as f:
            sides[side] = json.load(f)
    p, r = sides["project"], sides["reference"]
    result = {
        "benchmark": "memory",
        "project": p,
        "reference": r,
        "peak_ratio_project_over_reference": p["peak_rss_bytes"] / r["peak_rss_bytes"],
        "increment_ratio_project_over_reference": (p["training_increment_bytes"] / r["training_increment_bytes"]
                                                   if r["training_increment_bytes"] > 0 else None),
        "machine": p["machine"],
    }
    rows = [[side, common.fmt_bytes(s["rss_after_build_bytes"]), common.fmt_bytes(s["peak_rss_bytes"]),
             common.fmt_bytes(s["training_increment_bytes"]),
             "" if s["gpu_max_allocated_bytes"] is None else common.fmt_bytes(s["gpu_max_allocated_bytes"])]
            for side, s in (("project", p), ("reference (tutorial)", r))]
    md = "\n".join([
        "# Peak memory per training process",
        "",
        f"Model: {p['model']}; batch {p['batch'][0]} x {p['batch'][1]} tokens; {p['steps']} training steps; "
        "one fresh process per side (teacher + student + AdamW).",
        "",
        common.md_table(["side", "RSS after build", "peak RSS (VmHWM)", "peak - RSS after build",
                         "GPU max allocated"], rows),
        "",
        f"Peak RSS ratio project/reference: {result['peak_ratio_project_over_reference']:.3f}; "
        "training increment ratio: "
        + (f"{result['increment_ratio_project_over_reference']:.3f}" if result["increment_ratio_project_over_reference"]
           else "n/a"),
    ])
    common.write_result(out_dir, "memory", result, md)
    return result


if __name__ == "__main__":
    main()
