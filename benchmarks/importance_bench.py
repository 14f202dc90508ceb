"""Importance computation over the dev set, as a multiple of one dev evaluation pass (forward only).

    python -m benchmarks.importance_bench --out DIR --save-state FILE [--smoke]

Both use what the pipeline uses: ``dynabert.train.evaluation.evaluate`` (length-sorted dev batches, no_grad) and
``dynabert.model.importance.compute_importance`` over the same dev batches (forward + backward per batch, head
mask and FFN-neuron scores). The importance is then used to reorder the teacher, and the reordered weights
are saved to FILE: the step-time, memory and latency benchmarks build both sides from them.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402


def parse_args(argv=None):
    p = common.parser("benchmarks.importance_bench", __doc__)
    p.add_argument("--save-state", required=True, help="where to write the reordered teacher weights")
    p.add_argument("--eval-batch-size", type=int, default=64, help="the pipeline's run.eval_batch_size default")
    p.add_argument("--eval-repeats", type=int, default=2)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    common.apply_threads(args.threads)
    import numpy as np
    import paddle

    from benchmarks import workload as W
    from dynabert.collectives import SingleProcess
    from dynabert.data.batching import eval_batches, to_tensors
    from dynabert.model.importance import compute_importance
    from dynabert.model.outputs import forward
    from dynabert.model.reorder import reorder_heads_and_neurons
    from dynabert.train.evaluation import evaluate
    from dynabert.train.losses import task_loss

    paddle.set_device("gpu" if args.device == "gpu" else "cpu")
    sync = paddle.device.cuda.synchronize if args.device == "gpu" else (lambda: None)
    w = W.load_workload(args.smoke, train_limit=64)
    teacher = W.new_teacher(w)
    comms = SingleProcess()

    def dev_batches():
        return (to_tensors(b) for _, b in eval_batches(w.dev, args.eval_batch_size, 0, 1, w.pad_token_id))

    # warm-up: one forward and one importance batch (first-call allocations, kernel selection)
    first = next(dev_batches())
    with paddle.no_grad():
        forward(teacher, first)
    compute_importance(teacher, iter([first]), lambda logits, y: task_loss(logits, y, False))

    eval_seconds, metrics = [], None
    for _ in range(args.eval_repeats):
        sync()
        with common.Timer() as t:
            metrics = evaluate(lambda b: forward(teacher, b), w.dev, "sst-2", False, args.eval_batch_size, comms,
                               w.pad_token_id)
            sync()
        eval_seconds.append(t.seconds)
    sync()
    with common.Timer() as t:
        heads, neurons = compute_importance(teacher, dev_batches(), lambda logits, y: task_loss(logits, y, False))
        sync()
    importance_seconds = t.seconds
    reorder_heads_and_neurons(teacher, heads, neurons)
    W.save_state(teacher, args.save_state)

    tokens = sum(len(f.input_ids) for f in w.dev)
    n_batches = -(-len(w.dev) // args.eval_batch_size)
    result = {
        "benchmark": "importance",
        "smoke": args.smoke,
        "device": args.device,
        "model": w.model_name,
        "data": w.data_source,
        "dev_examples": len(w.dev),
        "dev_tokens": tokens,
        "eval_batch_size": args.eval_batch_size,
        "dev_batches": n_batches,
        "eval_pass_seconds": eval_seconds,
        "eval_pass_median_seconds": common.median(eval_seconds),
        "importance_seconds": importance_seconds,
        "importance_over_eval": importance_seconds / common.median(eval_seconds),
        "eval_metrics_untrained_classifier": metrics,
        "head_importance_shape": list(np.shape(heads)),
        "neuron_importance_shape": list(np.shape(neurons)),
        "machine": common.machine_info(args.device),
    }
    md = "\n".join([
        "# Importance computation vs one dev evaluation pass",
        "",
        f"Model: {result['model']}. Dev set: {len(w.dev)} examples, {tokens} tokens, batches of "
        f"{args.eval_batch_size} sorted by length ({n_batches} batches). Data: {w.data_source}.",
        "",
        common.md_table(["measurement", "seconds"], [
            ["dev evaluation pass (forward, no_grad), median of %d" % len(eval_seconds),
             result["eval_pass_median_seconds"]],
            ["importance over the dev set (forward + backward + scores)", importance_seconds]]),
        "",
        f"**Importance = {result['importance_over_eval']:.2f} x one evaluation pass.**",
    ])
    common.write_result(args.out, "importance", result, md)
    print(md, flush=True)


if __name__ == "__main__":
    main()
