"""Inference latency per width with Paddle Inference (the exported standalone sub-models).

    python -m benchmarks.latency --out DIR [--teacher-state F] [--results-json RUN/results.json] [--smoke]

A supernet is built from the (reordered) MiniLM; every width is cut out with
``dynabert.model.export.extract_submodel`` and saved with ``save_exported(..., inference_model=True)`` into a
temporary directory; then ``inference_predictor(path, threads)`` + ``run_predictor`` are timed at batch 1
and batch 32, sequence length 128 (all tokens real), with a fixed thread count. Each predictor's output
is checked against the supernet at that width first. With ``--results-json`` (a pipeline run's
results.json) the PNG also shows the dev accuracy of each width.
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks.latency", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--teacher-state", default=None)
    p.add_argument("--results-json", default=None, help="a pipeline results.json: accuracy per width for the PNG")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--threads", type=int, default=None, help="predictor threads (default: all CPUs)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batches", default="1,32")
    p.add_argument("--min-seconds", type=float, default=4.0, help="time at least this long per (width, batch)")
    p.add_argument("--max-runs", type=int, default=50, help="at most this many timed runs per (width, batch)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    threads = args.threads or common.available_cpus()
    common.set_threads(threads)
    run(args, threads)


def run(args, threads):
    import paddle
    from paddlenlp.utils.log import logger as paddlenlp_logger

    paddlenlp_logger.set_level("WARNING")  # its INFO lines ("Configuration saved in ...") are noise here
    paddle.set_device("gpu" if args.device == "gpu" else "cpu")
    w, sn, inputs = build_supernet_and_inputs(args)
    with tempfile.TemporaryDirectory(prefix="dynabert-latency-") as tmp:
        predictors, rows = export_and_check(args, w, sn, inputs, tmp, threads)
        time_in_rounds(args, predictors, rows, inputs)
        predictors.clear()
    result = summarise(args, w, rows, threads, seq_len=next(iter(inputs.values()))["input_ids"].shape[1])
    md = markdown(result)
    common.write_result(args.out, "latency", result, md)
    plot(result, os.path.join(args.out, "latency.png"))
    print(md, flush=True)


def batch_sizes(args):
    return [int(b) for b in args.batches.split(",")]


def build_supernet_and_inputs(args):
    """The (reordered) supernet and one input batch per batch size: random ids, every position a token."""
    import numpy as np

    from benchmarks import workload as W
    from dynabert.model.supernet import Supernet

    w = W.load_workload(args.smoke, train_limit=64, dev_limit=8)
    state = W.load_state(args.teacher_state) if args.teacher_state else None
    teacher = W.new_teacher(w, state)
    sn = Supernet(teacher, W.WIDTHS)
    sn.eval()
    seq = min(args.seq_len, teacher.config.max_position_embeddings)
    vocab = teacher.config.vocab_size
    rng = np.random.RandomState(W.SEED)

    def make_batch(b):
        ids = rng.randint(1000 if vocab > 2000 else 5, vocab, size=(b, seq)).astype(np.int64)
        ids[:, 0] = 101 if vocab > 2000 else 2
        return {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
                "attention_mask": np.ones((b, seq), np.float32)}

    return w, sn, {b: make_batch(b) for b in batch_sizes(args)}


def export_and_check(args, w, sn, inputs, tmp, threads):
    """Every width cut out, saved as an inference model and loaded in a predictor, whose output is checked
    against the supernet at that width first."""
    import numpy as np
    import paddle

    from benchmarks import workload as W
    from dynabert.model.export import extract_submodel, inference_predictor, run_predictor, save_exported

    tokenizer = _tokenizer(w, tmp)
    predictors, rows = {}, []
    first = inputs[batch_sizes(args)[0]]
    check = {k: v[:2] for k, v in first.items()}
    for width in W.WIDTHS:
        sub = extract_submodel(sn, width)
        path = os.path.join(tmp, f"width_{width:g}")
        meta = save_exported(sub, width, tokenizer, path, inference_model=True)
        predictor = inference_predictor(path, threads, device=args.device)
        sn.set_width(width)
        with paddle.no_grad():
            expected = sn(paddle.to_tensor(check["input_ids"]), paddle.to_tensor(check["token_type_ids"]),
                          paddle.to_tensor(check["attention_mask"])).numpy()
        max_diff = float(np.abs(run_predictor(predictor, check) - expected).max())
        predictors[width] = predictor
        rows.append({"width": width, "parameters": meta["parameters"], "heads": meta["num_heads"],
                     "max_abs_diff_vs_supernet": max_diff, "latency": {}})
    return predictors, rows


def time_in_rounds(args, predictors, rows, inputs) -> None:
    """Timed in rounds, every width once per round in a rotating order, so that a slow period of the
    machine (other processes) hits all widths alike instead of whichever ran then."""
    import time

    from benchmarks import workload as W
    from dynabert.model.export import run_predictor

    for b in batch_sizes(args):
        batch = inputs[b]
        for width in W.WIDTHS:
            for _ in range(2):  # warm-up
                run_predictor(predictors[width], batch)
        times = {width: [] for width in W.WIDTHS}
        rounds = 0
        while rounds < 3 or (min(sum(t) for t in times.values()) < args.min_seconds and rounds < args.max_runs):
            order = list(W.WIDTHS[rounds % len(W.WIDTHS):]) + list(W.WIDTHS[:rounds % len(W.WIDTHS)])
            for width in order:
                start = time.perf_counter()
                run_predictor(predictors[width], batch)
                times[width].append(time.perf_counter() - start)
            rounds += 1
        for row in rows:
            t = times[row["width"]]
            row["latency"][str(b)] = {"median_seconds": common.median(t), "runs": len(t), "min_seconds": min(t)}
    for row in rows:
        print(f"width {row['width']:g}: " + ", ".join(
            f"batch {b}: {row['latency'][str(b)]['median_seconds'] * 1000:.1f} ms" for b in batch_sizes(args))
            + f" (max |diff| vs supernet {row['max_abs_diff_vs_supernet']:.2e})", flush=True)


def summarise(args, w, rows, threads, seq_len) -> dict:
    full = next(r for r in rows if r["width"] == 1.0)
    for r in rows:
        r["ratio_to_full"] = {b: r["latency"][b]["median_seconds"] / full["latency"][b]["median_seconds"]
                              for b in r["latency"]}
    accuracy, acc_source = _accuracy(args.results_json)
    half = next((r for r in rows if r["width"] == 0.5), None)
    big = str(max(batch_sizes(args)))
    return {
        "benchmark": "latency",
        "smoke": args.smoke,
        "device": args.device,
        "model": w.model_name,
        "predictor": "Paddle Inference, " + ("GPU" if args.device == "gpu" else
                                             f"CPU, {threads} math-library threads, MKLDNN off"),
        "seq_len": seq_len,
        "batch_sizes": batch_sizes(args),
        "input": "random token ids, every position a real token (attention mask all ones)",
        "rows": rows,
        "width_0.5_ratio_at_batch_%s" % big: half["ratio_to_full"][big] if half else None,
        "target": "width 0.5 <= 0.6 x width 1.0 at batch 32",
        "target_met": (half["ratio_to_full"][big] <= 0.6) if half else None,
        "accuracy": accuracy,
        "accuracy_source": acc_source,
        "machine": common.machine_info(args.device),
    }


def markdown(result: dict) -> str:
    rows, sizes, accuracy = result["rows"], result["batch_sizes"], result["accuracy"]
    big = str(max(sizes))
    key = "width_0.5_ratio_at_batch_" + big
    table = [[f"{r['width']:g}", r["heads"], f"{r['parameters']:,}"]
             + [r["latency"][str(b)]["median_seconds"] * 1000 for b in sizes]
             + [r["ratio_to_full"][str(b)] for b in sizes]
             + ([accuracy.get(f"{r['width']:g}", "")] if accuracy else [])
             for r in rows]
    header = (["width", "heads", "parameters"] + [f"batch {b} ms" for b in sizes]
              + [f"ratio to 1.0 (batch {b})" for b in sizes] + (["dev accuracy"] if accuracy else []))
    return "\n".join([
        f"# Inference latency per width ({result['predictor']})",
        "",
        f"Model: {result['model']}. Sequence length {result['seq_len']}; {result['input']}. Median of timed runs "
        "after 2 warm-ups; widths interleaved in rotating rounds.",
        "",
        common.md_table(header, table),
        "",
        f"**Width 0.5 at batch {big}: {result[key]:.3f} x width 1.0** "
        f"(target <= 0.6: {'met' if result['target_met'] else 'MISSED'})." if result[key] is not None else "",
        f"Accuracy from {result['accuracy_source']}." if accuracy else "No results.json given: accuracy omitted.",
    ])


def _tokenizer(w, tmp):
    if w.model_dir:
        from dynabert.model.pretrained import load_tokenizer

        return load_tokenizer(w.model_dir)
    from paddlenlp.transformers import BertTokenizer

    from benchmarks.workload import SMOKE_VOCAB
    vocab = os.path.join(tmp, "vocab.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                          + [f"w{i}" for i in range(SMOKE_VOCAB - 5)]) + "\n")
    return BertTokenizer(vocab_file=vocab, do_lower_case=True)


def _accuracy(path):
    """{width: main metric} from a pipeline results.json (export rows, else compress_best)."""
    if not path:
        return None, None
    with open(path) as f:
        res = json.load(f)
    from dynabert.data.metrics import main_metric_name
    metric = main_metric_name(res.get("task") or "sst-2")
    out = {}
    for row in res.get("widths") or []:
        out[f"{float(row['width']):g}"] = row["metrics"][metric]
    if not out:
        for width, m in (res.get("compress_best") or {}).items():
            out[f"{float(width):g}"] = m[metric]
    return (out or None), f"{path} (dev {metric})"


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    widths = [r["width"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for b in result["batch_sizes"]:
        ax.plot(widths, [r["latency"][str(b)]["median_seconds"] * 1000 for r in rows], "o-", label=f"batch {b}")
    ax.set_xlabel("width")
    ax.set_ylabel(f"latency (ms), seq {result['seq_len']}")
    ax.set_yscale("log")
    ax.set_xticks(widths)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if result.get("accuracy"):
        ax2 = ax.twinx()
        acc = [result["accuracy"].get(f"{wd:g}") for wd in widths]
        pts = [(wd, a) for wd, a in zip(widths, acc) if a is not None]
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], "s--", color="black", label="dev accuracy")
        ax2.set_ylabel("dev accuracy")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper left")
    ax.set_title(f"DynaBERT widths: {result['predictor']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
