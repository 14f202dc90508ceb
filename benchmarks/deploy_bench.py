"""Deployment candidates of a finished run: metric and latency of every exported width in fp32 and int8 on each
runtime, at several batch sizes (``dynabert.deploy.select_run`` once per batch size, sharing its derived models).

    python -m benchmarks.deploy_bench RUN_DIR --out DIR [--batches 1,32] [--seq-len 128] [--threads N]

Writes ``DIR/deploy.json`` and ``DIR/deploy.md`` (the table, the targets, the machine and the git commit) and
``DIR/deploy_batch_B.png`` (metric against latency per batch size). Targets (issue 13): the int8 width-0.5 model
within 1.5 points of its fp32 metric, and at most 0.3x the latency of fp32 width 1.0 at the largest batch.
"""
import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

POINTS = 0.015  # "within 1.5 points"
RATIO = 0.3


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks.deploy_bench", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", default=common.DEFAULT_OUT)
    p.add_argument("--batches", default="1,32")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="threads per runtime (default: OMP_NUM_THREADS, else all)")
    p.add_argument("--runtimes", default="paddle,onnxruntime")
    p.add_argument("--min-runs", type=int, default=10)
    p.add_argument("--min-seconds", type=float, default=2.0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    common.apply_threads(args.threads)  # before paddle is imported
    threads = int(os.environ["OMP_NUM_THREADS"])
    from dynabert.deploy.select import SelectOptions, select_run
    from launcher.config import load_config

    cfg = load_config(os.path.join(args.run_dir, "config.yaml"))
    work = os.path.join(args.out, "deploy_select")  # one artifacts directory: int8 models made once
    batches = [int(b) for b in args.batches.split(",")]
    by_batch = {}
    for b in batches:
        options = SelectOptions(batch_size=b, seq_len=args.seq_len, threads=threads, out_dir=work,
                                runtimes=tuple(args.runtimes.split(",")), min_runs=args.min_runs,
                                min_seconds=args.min_seconds)
        by_batch[b] = select_run(args.run_dir, cfg=cfg, options=options, log=lambda m: print(m, flush=True))
        shutil.copyfile(os.path.join(work, "metric_vs_latency.png"), os.path.join(args.out, f"deploy_batch_{b}.png"))
    result = summarise(by_batch, batches, args, threads)
    md = markdown(result)
    common.write_result(args.out, "deploy", result, md)
    print(md, flush=True)


def summarise(by_batch: dict, batches, args, threads) -> dict:
    first = by_batch[batches[0]]
    rows = []
    for r in first["rows"]:
        row = {k: r[k] for k in ("name", "width", "depth", "runtime", "precision", "parameters", "size_mb", "metric",
                                 "delta_vs_fp32")}
        for b in batches:
            other = next(x for x in by_batch[b]["rows"] if x["name"] == r["name"])
            row[f"batch_{b}"] = {k: other[k] for k in ("latency_ms", "p90_ms", "runs", "fastest_runtime", "pareto")}
        rows.append(row)
    big = f"batch_{max(batches)}"
    lookup = {(r["width"], r["runtime"], r["precision"]): r for r in rows}
    fp32_full = [r for r in rows if r["width"] == 1.0 and r["precision"] == "fp32"]
    fastest_full = min(fp32_full, key=lambda r: r[big]["latency_ms"]) if fp32_full else None
    targets = []
    for runtime in sorted({r["runtime"] for r in rows}):
        half, half_fp32 = lookup.get((0.5, runtime, "int8")), lookup.get((0.5, runtime, "fp32"))
        full = lookup.get((1.0, runtime, "fp32"))
        if not (half and half_fp32 and full):
            continue
        ratio_same = half[big]["latency_ms"] / full[big]["latency_ms"]
        ratio_best = half[big]["latency_ms"] / fastest_full[big]["latency_ms"]
        change = half["metric"] - half_fp32["metric"]
        targets.append({"runtime": runtime, "int8_metric": half["metric"], "fp32_metric": half_fp32["metric"],
                        "int8_minus_fp32_points": change * 100, "metric_target_met": change >= -POINTS - 1e-12,
                        "latency_ratio_vs_fp32_w1_same_runtime": ratio_same,
                        "latency_ratio_vs_fastest_fp32_w1": ratio_best,
                        "latency_target_met": ratio_best <= RATIO})
    return {"benchmark": "deploy", "run_dir": os.path.abspath(args.run_dir), "seq_len": args.seq_len,
            "batch_sizes": batches, "threads": threads, "split": first["settings"]["split"],
            "split_source": first["settings"]["split_source"], "metric": first["settings"]["metric"],
            "onnx_int8": first["settings"]["onnx_int8"], "calibration": first["settings"]["calibration"],
            "rows": rows, "targets": targets, "fastest_fp32_width_1": fastest_full["name"] if fastest_full else None,
            "chosen_without_constraints": {b: by_batch[b]["chosen"] for b in batches},
            "machine": common.machine_info("cpu")}


def markdown(result: dict) -> str:
    batches = result["batch_sizes"]
    header = (["candidate", "runtime", "precision", "parameters", "size MB", f"{result['split']} {result['metric']}",
               "int8 - fp32 (pt)"] + [f"batch {b} median / p90 ms" for b in batches]
              + [f"fastest runtime (batch {b})" for b in batches] + ["Pareto (batch %d)" % max(batches)])
    table = []
    for r in result["rows"]:
        table.append([r["name"].split("/")[0], r["runtime"], r["precision"], f"{r['parameters']:,}",
                      f"{r['size_mb']:.1f}", f"{r['metric']:.4f}",
                      "" if r["delta_vs_fp32"] is None else f"{r['delta_vs_fp32'] * 100:+.2f}"]
                     + [f"{r[f'batch_{b}']['latency_ms']:.1f} / {r[f'batch_{b}']['p90_ms']:.1f}" for b in batches]
                     + ["yes" if r[f"batch_{b}"]["fastest_runtime"] else "" for b in batches]
                     + ["*" if r[f"batch_{max(batches)}"]["pareto"] else ""])
    lines = [f"# Deployment candidates of {result['run_dir']}", "",
             f"Metric: {result['split']} {result['metric']} ({result['split_source']}). Latency: one batch of "
             f"{result['seq_len']} real tokens per row, median and p90 of at least 10 timed runs after 2 warm-ups, "
             f"candidates interleaved in rotating rounds, {result['threads']} thread(s) per runtime. int8: Paddle "
             f"Inference via PaddleSlim post-training quantization (oneDNN int8 for the Linear layers); onnxruntime "
             f"via {result['onnx_int8']} quantization; calibration on {result['calibration']['rows']} training "
             "rows. The machine is shared: absolute times are noisy, the interleaving protects the ratios.", "",
             common.md_table(header, table), "", "## Targets (width 0.5, int8)", ""]
    for t in result["targets"]:
        lines.append(f"- {t['runtime']}: int8 {t['int8_metric']:.4f} vs fp32 {t['fp32_metric']:.4f} "
                     f"({t['int8_minus_fp32_points']:+.2f} points; target: no more than 1.5 lost: "
                     f"{'met' if t['metric_target_met'] else 'MISSED'}); batch {max(batches)} latency "
                     f"{t['latency_ratio_vs_fastest_fp32_w1']:.2f}x the fastest fp32 width 1.0 "
                     f"({result['fastest_fp32_width_1']}), {t['latency_ratio_vs_fp32_w1_same_runtime']:.2f}x "
                     f"fp32 width 1.0 on the same runtime (target <= {RATIO}: "
                     f"{'met' if t['latency_target_met'] else 'MISSED'}).")
    lines += ["", "Chosen with no constraints (highest metric, then lowest latency): "
              + ", ".join(f"batch {b}: {n}" for b, n in result["chosen_without_constraints"].items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
