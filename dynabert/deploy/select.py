"""``select_run``: measure every candidate of a finished run, print the table, choose, write the chosen model.

    <out>/candidates.json, candidates.md   the table (and the settings and machine it was measured with)
    <out>/metric_vs_latency.png            metric against latency, Pareto front, chosen candidate
    <out>/model/                           the chosen candidate, ready to serve (card.json + model + tokenizer)
    <out>/artifacts/                       ONNX exports, int8 models and metrics, reused by the next select

``<out>`` defaults to ``<run>/select``. Every measurement happens in this process; the caller runs it on one
rank only (``comms_is_main``).
"""
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

from dynabert import faults
from dynabert.config import Config
from dynabert.data import record
from dynabert.data.record import load_run_data
from dynabert.data.task_data import TaskData
from dynabert.deploy import candidates as cands
from dynabert.deploy import measure
from dynabert.deploy.choose import Constraints, choose, pareto_front
from dynabert.deploy.quantize import ONNX_INT8_METHODS, calibration_batches
from dynabert.deploy.runtime import available_runtimes, load_runner
from dynabert.deploy.serve_dir import card, write_served
from dynabert.deploy.table import MetricCache, candidate_rows, markdown_table
from dynabert.errors import UserError
from dynabert.io_utils import atomic_write_text

CALIBRATION_BATCH = 32


@dataclass(frozen=True)
class SelectOptions:
    batch_size: int = 32
    seq_len: int = 128
    threads: Optional[int] = None  # None: every CPU this process may use
    runtimes: Tuple[str, ...] = ("paddle", "onnxruntime")
    precisions: Tuple[str, ...] = ("fp32", "int8")
    constraints: Constraints = field(default_factory=Constraints)
    out_dir: Optional[str] = None  # None: <run>/select
    onnx_int8: str = "dynamic"  # or "static" (see dynabert/deploy/quantize.py)
    calibration_rows: int = 128
    calibration_seed: int = 0
    warmup: int = 2
    min_runs: int = 10
    min_seconds: float = 2.0
    max_runs: int = 100
    report_all_on_dev: bool = False  # read dev for every candidate too (the choice stays on the selection split)


def _check(options: SelectOptions) -> None:
    def need(ok, flag, message):
        if not ok:
            raise UserError(f"{flag}: {message}")
    need(options.batch_size >= 1, "--batch-size", f"must be >= 1, got {options.batch_size}")
    need(options.seq_len >= 3, "--seq-len", f"must be >= 3 ([CLS] x [SEP]), got {options.seq_len}")
    need(options.threads is None or options.threads >= 1, "--threads", f"must be >= 1, got {options.threads}")
    need(options.onnx_int8 in ONNX_INT8_METHODS, "--onnx-int8", f"must be one of {', '.join(ONNX_INT8_METHODS)}")
    need(options.calibration_rows >= 1, "--calibration-rows", "must be >= 1")
    need(options.runtimes and options.precisions, "--runtimes/--precisions", "must name at least one each")
    c = options.constraints
    for flag, value in (("--max-latency-ms", c.max_latency_ms), ("--max-params", c.max_params),
                        ("--max-size-mb", c.max_size_mb)):
        need(value is None or value > 0, flag, f"must be > 0, got {value}")


def select_run(run_dir: str, *, cfg: Config, options: SelectOptions = SelectOptions(), comms_is_main: bool = True,
               data: Optional[TaskData] = None, glue_dir: Optional[str] = None,
               log: Callable[[str], None] = print) -> dict:
    """Measure, tabulate, choose and write (see the module docstring). Returns {"rows", "chosen", "out_dir",
    "served_dir", "machine", "settings", "markdown"}; {} on a rank other than the main one. Raises UserError
    (exit 2) when no candidate meets the constraints, after the table, JSON and PNG are written.

    ``data``: the run's data (the pipeline's select stage passes what it loaded); None reads what the run
    recorded (``dynabert/data/record.py``), or ``glue_dir`` on purpose. Candidates are scored and chosen on
    the run's selection split; dev is read once, for the chosen candidate (every candidate with
    ``options.report_all_on_dev``)."""
    if not comms_is_main:
        return {}
    _check(options)
    out_dir = options.out_dir or os.path.join(run_dir, "select")
    artifacts = os.path.join(out_dir, "artifacts")
    threads = options.threads or measure.available_cpus()
    usable = available_runtimes()
    for runtime in options.runtimes:
        if usable.get(runtime):
            raise UserError(f"--runtimes: {runtime} is not usable here ({usable[runtime]})")
    models = cands.exported_models(run_dir)
    candidates = cands.enumerate_candidates(models, runtimes=options.runtimes, precisions=options.precisions)
    with open(os.path.join(models[0].path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    if options.seq_len > int(config["max_position_embeddings"]):
        raise UserError(f"--seq-len: {options.seq_len} is longer than the model's "
                        f"{config['max_position_embeddings']} positions")

    from dynabert.model.pretrained import load_tokenizer
    tokenizer = load_tokenizer(models[0].path)
    if data is None:
        data, provenance = load_run_data(run_dir, cfg, tokenizer, glue_dir=glue_dir, log=log)
    else:
        provenance = {**record.describe(data, cfg), "differs_from_run": False}
    decide_on = measure.split_of(data, provenance, data.selection_name)
    report_on = measure.split_of(data, provenance, "dev")
    log(f"select: {len(candidates)} candidates ({len(models)} sub-models x {', '.join(options.runtimes)} x "
        f"{', '.join(options.precisions)}); chosen on {decide_on['split']} ({decide_on['source']}), the chosen "
        f"one reported on dev ({report_on['source']})"
        + ("; data.select_on is dev: the choice and its figure are made on the same rows (optimistic)"
           if data.selection_name == "dev" else ""))

    calibration: Dict[str, list] = {}
    settings = {"rows": options.calibration_rows, "seed": options.calibration_seed, "task": data.task,
                "max_seq_len": cfg.data.max_seq_len, "source": provenance["sources"].get("train")}

    def calibration_set():
        if "batches" not in calibration:  # drawn from the training rows (cached), never the reported split
            calibration["batches"] = calibration_batches(
                data.train, batch_size=CALIBRATION_BATCH, batches=-(-options.calibration_rows // CALIBRATION_BATCH),
                seed=options.calibration_seed, pad_token_id=tokenizer.pad_token_id)
        return calibration["batches"]

    for i, c in enumerate(candidates, start=1):
        cands.prepare(c, artifacts=artifacts, calibration=calibration_set, onnx_int8=options.onnx_int8,
                      calibration_settings=settings, log=log)
        faults.fire("model", stage="select", rank=0, step=i)  # tests: a kill mid-select (rank 0 selects)
    runners = {c.name: load_runner(c.runtime, c.precision, c.files, threads=threads) for c in candidates}

    def scored(split: dict, names) -> MetricCache:
        cache = MetricCache(os.path.join(artifacts, f"metrics_{split['split']}.json"), split, cfg.data.max_seq_len)
        for c in candidates:
            if c.name in names:
                cache.get(c, lambda c=c: measure.evaluate(runners[c.name], split, batch_size=cfg.run.eval_batch_size,
                                                          pad_token_id=tokenizer.pad_token_id))
        cache.save()
        return cache

    every = {c.name for c in candidates}
    metrics = scored(decide_on, every)
    batch = measure.latency_batch(batch_size=options.batch_size, seq_len=options.seq_len,
                                  vocab_size=int(config["vocab_size"]), cls_id=tokenizer.cls_token_id,
                                  sep_id=tokenizer.sep_token_id)
    log(f"select: timing {len(runners)} candidates at batch {options.batch_size} x {options.seq_len} tokens, "
        f"{threads} thread(s), in rotating rounds (a busy machine makes these numbers noisy)")
    latency = measure.time_runners(runners, batch, warmup=options.warmup, min_runs=options.min_runs,
                                   min_seconds=options.min_seconds, max_runs=options.max_runs)
    rows = candidate_rows(candidates, metrics=metrics.values, latency=latency, metric_name=decide_on["metric_name"])
    for i in pareto_front(rows):
        rows[i]["pareto"] = True
    if options.report_all_on_dev:  # opted in: every candidate read on dev (a table, not a choice)
        on_dev = scored(report_on, every).values if report_on["split"] != decide_on["split"] else metrics.values
        for r in rows:
            r["dev_metric"] = on_dev[r["name"]][report_on["metric_name"]]

    machine = measure.machine(threads)
    commit = measure.code_commit()
    run_settings = {"batch_size": options.batch_size, "seq_len": options.seq_len, "threads": threads,
                    "runtimes": list(options.runtimes), "precisions": list(options.precisions),
                    "onnx_int8": options.onnx_int8, "calibration": settings, "split": decide_on["split"],
                    "split_source": decide_on["source"], "split_digest": decide_on["digest"],
                    "metric": decide_on["metric_name"], "report_all_on_dev": options.report_all_on_dev,
                    "data_differs_from_run": provenance["differs_from_run"],
                    "constraints": options.constraints.as_dict(), "timing": {
                        k: getattr(options, k) for k in ("warmup", "min_runs", "min_seconds", "max_runs")}}
    markdown = markdown_table(rows, metric_name=decide_on["metric_name"], split=decide_on["split"],
                              settings=run_settings, machine=machine)
    result = {"run_dir": os.path.abspath(run_dir), "out_dir": os.path.abspath(out_dir), "settings": run_settings,
              "machine": machine, "git_commit": commit, "rows": rows, "chosen": None, "served_dir": None,
              "reported": None, "markdown": markdown}
    log("\n" + markdown)
    try:
        chosen = choose(rows, options.constraints)
    except UserError:
        runners.clear()
        _write_outputs(out_dir, result, rows, decide_on, None)
        raise
    result["chosen"] = chosen["name"]
    # The chosen candidate's reported figure: dev, read once (already read with --report-all-on-dev).
    reported = (scored(report_on, {chosen["name"]}).values[chosen["name"]]
                if report_on["split"] != decide_on["split"] else chosen["metrics"])
    runners.clear()
    result["reported"] = {"split": report_on["split"], "metric": reported[report_on["metric_name"]],
                          "metrics": reported, "source": report_on["source"], "digest": report_on["digest"]}
    picked = next(c for c in candidates if c.name == chosen["name"])
    served = os.path.join(out_dir, "model")
    timing = {**latency[picked.name], "batch_size": options.batch_size, "seq_len": options.seq_len,
              "threads": threads}
    write_served(picked, served, card(picked, row=chosen, decided_on=decide_on, reported_on=report_on,
                                      reported=reported, machine=machine, latency=timing, run_dir=run_dir,
                                      commit=commit, max_seq_len=cfg.data.max_seq_len,
                                      constraints=options.constraints.as_dict(),
                                      data_differs_from_run=provenance["differs_from_run"]))
    result["served_dir"] = os.path.abspath(served)
    _write_outputs(out_dir, result, rows, decide_on, chosen["name"])
    log(f"select: chose {chosen['name']} under {options.constraints.describe()} on {decide_on['split']} "
        f"({decide_on['metric_name']} {chosen['metric']:.4f}); on dev {report_on['metric_name']} "
        f"{reported[report_on['metric_name']]:.4f}; {chosen['latency_ms']:.1f} ms per batch of "
        f"{options.batch_size}; written to {served}")
    return result


def _write_outputs(out_dir: str, result: dict, rows, split: dict, chosen: Optional[str]) -> None:
    from dynabert.deploy.plot import plot_candidates

    data = {k: v for k, v in result.items() if k != "markdown"}
    atomic_write_text(os.path.join(out_dir, "candidates.json"), json.dumps(data, indent=2) + "\n")
    atomic_write_text(os.path.join(out_dir, "candidates.md"), result["markdown"])
    s = result["settings"]
    plot_candidates(rows, os.path.join(out_dir, "metric_vs_latency.png"),
                    metric_name=f"{split['split']} {split['metric_name']}", chosen=chosen,
                    title=f"{os.path.basename(os.path.normpath(result['run_dir']))}: batch {s['batch_size']} x "
                          f"{s['seq_len']} tokens, {s['threads']} thread(s), {result['machine']['cpu_model']}")
