"""``dynabert-select RUN_DIR``: measure every exported sub-model of a finished run (fp32 and int8, on Paddle
Inference and ONNX Runtime), print the table with the Pareto front, and write the best one that meets the
constraints as a ready-to-serve directory (``<out>/model``). Exit 2, with the closest candidates named, when
none meets them.

    dynabert-select runs/demo --batch-size 32 --seq-len 128 --max-latency-ms 800 --min-metric 0.80

Candidates are scored and chosen on the run's selection split (the rows its importance and checkpoint
selection used), read as the run read them: from its corpus cache, or from the data it recorded in
``data.json``. Data that is gone or differs is refused in one line; ``--glue-dir`` scores on a GLUE directory
you name instead, and the card says so. Dev is read once, for the chosen candidate's reported figure
(``--report-all-on-dev``: for every candidate, in the table; the choice does not change).
"""
import argparse
import os
import sys
from typing import Optional, Sequence

import dynabert  # noqa: F401  (zlib before paddle)
from dynabert.errors import UserError, run_reporting_errors
from launcher.config import load_config


def _names(text: str) -> tuple:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _say(message: str) -> None:
    print(message, flush=True)  # progress lines appear as they happen, also when piped to a log


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dynabert-select", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run (config.yaml and export/width_W/)")
    p.add_argument("--batch-size", type=int, default=32, help="latency batch size (default 32)")
    p.add_argument("--seq-len", type=int, default=128, help="latency sequence length (default 128)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per runtime (default: all available)")
    p.add_argument("--runtimes", type=_names, default=("paddle", "onnxruntime"),
                   help="comma-separated: paddle, onnxruntime (default both)")
    p.add_argument("--precisions", type=_names, default=("fp32", "int8"), help="comma-separated: fp32, int8")
    p.add_argument("--max-latency-ms", type=float, default=None, help="median latency per batch at most this")
    p.add_argument("--min-metric", type=float, default=None,
                   help="the task's main metric on the selection split at least this")
    p.add_argument("--max-params", type=int, default=None, help="at most this many parameters")
    p.add_argument("--max-size-mb", type=float, default=None, help="model files at most this many MB (10^6 B)")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/select)")
    p.add_argument("--onnx-int8", choices=("dynamic", "static"), default="dynamic",
                   help="ONNX Runtime int8 method (default dynamic; see docs/deploy.md)")
    p.add_argument("--calibration-rows", type=int, default=128, help="training rows for int8 calibration")
    p.add_argument("--min-runs", type=int, default=10, help="timed runs per candidate at least (default 10)")
    p.add_argument("--min-seconds", type=float, default=2.0, help="timed seconds per candidate at least")
    p.add_argument("--glue-dir", default=None,
                   help="score on this GLUE directory instead of the data the run recorded (the card says so)")
    p.add_argument("--report-all-on-dev", action="store_true",
                   help="also read every candidate on dev, for the table (the choice stays on the selection split)")
    return p


def run(args: argparse.Namespace) -> dict:
    from dynabert.deploy.choose import Constraints
    from dynabert.deploy.select import SelectOptions, select_run

    config_path = os.path.join(args.run_dir, "config.yaml")
    if not os.path.isdir(args.run_dir):
        raise UserError(f"{args.run_dir}: no such run directory")
    if not os.path.isfile(config_path):
        raise UserError(f"{config_path}: missing; RUN_DIR must be a run's output directory")
    cfg = load_config(config_path)
    options = SelectOptions(
        batch_size=args.batch_size, seq_len=args.seq_len, threads=args.threads, runtimes=args.runtimes,
        precisions=args.precisions, out_dir=args.out, onnx_int8=args.onnx_int8,
        calibration_rows=args.calibration_rows, min_runs=args.min_runs, min_seconds=args.min_seconds,
        report_all_on_dev=args.report_all_on_dev,
        constraints=Constraints(max_latency_ms=args.max_latency_ms, min_metric=args.min_metric,
                                max_params=args.max_params, max_size_mb=args.max_size_mb))
    return select_run(args.run_dir, cfg=cfg, options=options, comms_is_main=True, glue_dir=args.glue_dir, log=_say)


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse already printed
        return int(e.code or 0)
    return run_reporting_errors(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
