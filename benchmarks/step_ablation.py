"""What each CPU fix of issue 28 bought: the project's compress step with each of them on and off.

    python -m benchmarks.step_ablation --out DIR [--teacher-state F] [--smoke] [--repeats N]

One process, the step `dynabert-bench` measures (``dynabert.train.bench_step.CompressStep``) on the step-time
benchmark's fixed batch, in four variants run round-robin (one step of each per round, after one untimed
round), so drift hits all four alike:

- ``before``: Paddle's stride kernels on, padding gradients left as the softmax leaks them (the step as it
  was before the fixes);
- ``padding``: ``PaddingGradients`` only (defect 14);
- ``contiguous``: stride kernels off only (defect 15);
- ``both``: what the project runs.

The numbers of the four are the same to round-off (tests/test_cpu_kernels.py); only the time differs.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402  (no paddle yet)

VARIANTS = {"before": (False, True), "padding": (True, True), "contiguous": (False, False), "both": (True, False)}


def parse_args(argv=None):
    p = common.parser("benchmarks.step_ablation", __doc__, batch=True)
    p.add_argument("--teacher-state", default=None)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    common.apply_threads(args.threads)
    import time

    import paddle

    from benchmarks import workload as W
    from dynabert.collectives import SingleProcess
    from dynabert.model.compat import STRIDE_FLAG
    from dynabert.train.bench_step import CompressStep, device_sync

    paddle.set_device("gpu" if args.device == "gpu" else "cpu")
    sync = device_sync() or (lambda: None)
    w = W.load_workload(args.smoke, dev_limit=8)
    state = W.load_state(args.teacher_state) if args.teacher_state else None
    paddle.seed(W.SEED + 1)
    step = CompressStep(W.new_teacher(w, state), W.bench_config(args.global_batch), SingleProcess(),
                        regression=False, steps=1000, sync=device_sync())
    guard = step.padding
    batch = W.fixed_batch(w, args.global_batch, args.seq_len)
    before = paddle.get_flags([STRIDE_FLAG])[STRIDE_FLAG]
    seconds = {name: [] for name in VARIANTS}
    index = 0
    for round_ in range(args.repeats + 1):
        for name, (padding, strided) in VARIANTS.items():
            step.padding = guard if padding else None
            paddle.set_flags({STRIDE_FLAG: strided})
            sync()
            start = time.perf_counter()
            step(batch, index)
            sync()
            if round_:  # round 0 warms every variant up
                seconds[name].append(time.perf_counter() - start)
            index += 1
    paddle.set_flags({STRIDE_FLAG: before})
    step.padding = guard
    med = {name: common.median(v) for name, v in seconds.items()}
    result = {"benchmark": "step_ablation", "smoke": args.smoke, "device": args.device, "model": w.model_name,
              "batch": {"global_batch": args.global_batch, "seq_len": args.seq_len}, "repeats": args.repeats,
              "threads": int(os.environ.get("OMP_NUM_THREADS", "0")), "variants": {
                  name: {"padding_gradients": VARIANTS[name][0], "stride_kernels": VARIANTS[name][1],
                         "median_step_seconds": med[name], "step_seconds": seconds[name],
                         "vs_before": med[name] / med["before"]} for name in VARIANTS},
              "machine": common.machine_info(args.device)}
    common.write_result(args.out, "step_ablation", result, markdown(result))
    print(markdown(result), flush=True)


def markdown(res) -> str:
    rows = [[name, "yes" if v["padding_gradients"] else "no", "on" if v["stride_kernels"] else "off",
             v["median_step_seconds"], v["vs_before"]] for name, v in res["variants"].items()]
    return "\n".join([
        f"# What each CPU fix bought: the compress step, {res['threads']} thread(s), {res['device']}", "",
        f"Model: {res['model']}. Batch {res['batch']['global_batch']} x {res['batch']['seq_len']} tokens (the "
        f"step-time benchmark's fixed batch). {res['repeats']} round-robin rounds after one untimed round.", "",
        common.md_table(["variant", "padding gradients zeroed (defect 14)", "stride kernels (defect 15)",
                         "median step s", "vs before"], rows), "",
        "Same numbers in every variant (tests/test_cpu_kernels.py); only the time differs.", "",
        common.machine_markdown(res["machine"])])


if __name__ == "__main__":
    main()
