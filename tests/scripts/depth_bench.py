"""Measurements of a finished depth run (docs/depth.md): inference latency of every exported (width, depth)
model, and the training step of the depth stage against the width stage's on the same batch.

    python tests/scripts/depth_bench.py --run RUN_DIR --out OUT_DIR [--threads 1] [--min-seconds 4]

Latency: Paddle Inference (``dynabert.model.export.inference_predictor``, MKLDNN off) on each ``RUN/export/*``
at batch 1 and 32, sequence 128, random ids with every position a token (as benchmarks/latency.py);
models interleaved in rotating rounds so a busy period of the machine hits all of them alike; each
predictor is first checked against the dynamic-graph model it was exported from.
Step time: the width stage's step (``supernet_step``: fine-tuned teacher once, every width) and the depth
stage's (``depth_step``: teacher supernet once per width, every width x depth), each followed by the
trainer's ``Optimization`` (all-reduce, verdict, AdamW), alternated on one fixed training batch.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from benchmarks import common  # noqa: E402  (no paddle import: threads can still be set)
from benchmarks.latency import batch_sizes  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a run directory with export/ and compress*/ (the depth run)")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", default="1,32")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--min-seconds", type=float, default=4.0)
    p.add_argument("--max-runs", type=int, default=30)
    p.add_argument("--step-repeats", type=int, default=4)
    p.add_argument("--skip", choices=("latency", "step"), default=None)
    return p.parse_args(argv)


def exported(run):
    from dynabert.model.export import EXPORT_META

    root = os.path.join(run, "export")
    found = []
    for name in sorted(os.listdir(root)):
        meta_path = os.path.join(root, name, EXPORT_META)
        if os.path.isfile(meta_path):
            with open(meta_path) as f:
                found.append((name, json.load(f)))
    return sorted(found, key=lambda x: (-x[1]["width"], -x[1].get("depth", 1.0)))


def latency(args):
    import numpy as np
    import paddle

    from dynabert.model.export import inference_predictor, load_exported, run_predictor

    found = exported(args.run)
    with open(os.path.join(args.run, "export", found[0][0], "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    rng = np.random.RandomState(0)
    inputs = {}
    for b in batch_sizes(args):
        ids = rng.randint(1000 if vocab > 2000 else 5, vocab, size=(b, args.seq_len)).astype(np.int64)
        ids[:, 0] = 101 if vocab > 2000 else 2
        inputs[b] = {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
                     "attention_mask": np.ones(ids.shape, np.float32)}
    models, rows = {}, []
    for name, meta in found:
        path = os.path.join(args.run, "export", name)
        predictor = inference_predictor(path, args.threads)
        check = {k: v[:2] for k, v in inputs[max(inputs)].items()}
        with paddle.no_grad():
            expected = load_exported(path)(**{k: paddle.to_tensor(v) for k, v in check.items()}).numpy()
        diff = float(np.abs(run_predictor(predictor, check) - expected).max())
        models[name] = predictor
        rows.append({"name": name, "width": meta["width"], "depth": meta.get("depth", 1.0),
                     "layers": meta.get("num_layers"), "heads": meta["num_heads"], "parameters": meta["parameters"],
                     "encoder_parameters": meta["encoder_parameters"], "max_abs_diff_vs_dygraph": diff,
                     "latency": {}})
    names = [r["name"] for r in rows]
    for b, batch in inputs.items():
        for name in names:
            for _ in range(2):
                run_predictor(models[name], batch)
        times = {name: [] for name in names}
        rounds = 0
        while rounds < 3 or (min(sum(t) for t in times.values()) < args.min_seconds and rounds < args.max_runs):
            for name in names[rounds % len(names):] + names[:rounds % len(names)]:
                start = time.perf_counter()
                run_predictor(models[name], batch)
                times[name].append(time.perf_counter() - start)
            rounds += 1
        for row in rows:
            row["latency"][str(b)] = {"median_seconds": common.median(times[row["name"]]),
                                      "runs": len(times[row["name"]])}
    full = next(r for r in rows if r["width"] == 1.0 and r["depth"] == 1.0)
    for row in rows:
        row["ratio_to_full"] = {b: row["latency"][b]["median_seconds"] / full["latency"][b]["median_seconds"]
                                for b in row["latency"]}
    return rows


def step_time(args):
    import numpy as np
    import paddle

    from dynabert.collectives import SingleProcess
    from dynabert.data.batching import GlobalBatches, to_tensors
    from dynabert.model import pretrained
    from dynabert.model.depth import DepthSupernet
    from dynabert.model.outputs import HiddenStates, KeptHiddenStates
    from dynabert.model.supernet import Supernet
    from dynabert.stages.prepare import prepare_data
    from dynabert.train.loop import Optimization
    from dynabert.train.precision import Precision
    from dynabert.train.run_log import RunLog
    from dynabert.train.step import depth_step, supernet_step
    from launcher.config import load_config

    cfg = load_config(os.path.join(args.run, "config.yaml"), [f"run.out_dir={args.run}"])
    ccfg = cfg.compress
    tokenizer = pretrained.load_tokenizer(os.path.join(args.run, "teacher"))
    data = prepare_data(cfg, tokenizer, RunLog(args.run, enabled=False))
    batch = next(iter(GlobalBatches(data.train, ccfg.optim.batch_size, cfg.run.seed, 0, 1, data.pad_token_id,
                                    data.pad_to, group_by_length=cfg.data.group_by_length).epoch(0)))
    tensors = to_tensors(batch)
    teacher = pretrained.load_model(os.path.join(args.run, "teacher"), data.num_classes, cfg.model.dropout)
    teacher.eval()
    state = paddle.load(os.path.join(args.run, "compress", "best", "supernet.pdparams"))
    width_sn = Supernet(teacher, ccfg.widths)
    width_sn.set_state_dict(state)
    depth_teacher = Supernet(teacher, ccfg.widths)
    depth_teacher.set_state_dict(state)
    depth_teacher.eval()
    student = DepthSupernet(Supernet(teacher, ccfg.widths), ccfg.depths)
    student.set_state_dict(state)
    comms, precision = SingleProcess(), Precision("fp32")
    sides = {
        "width stage": (Optimization(list(width_sn.model.named_parameters()), ccfg.optim, 1000, comms, precision),
                        HiddenStates(width_sn.model), HiddenStates(teacher)),
        "depth stage": (Optimization(student.named_parameters(), ccfg.optim, 1000, comms, precision),
                        KeptHiddenStates(student.model), HiddenStates(depth_teacher.model)),
    }
    width_sn.train()
    student.train()

    def run_side(name):
        opt, s_states, t_states = sides[name]
        paddle.seed(0)
        start = time.perf_counter()
        if name == "width stage":
            supernet_step(width_sn, s_states, teacher, t_states, tensors, width_sn.widths, ccfg.lambda_distill,
                          ccfg.lambda_logit, data.regression)
        else:
            depth_step(student, s_states, depth_teacher, t_states, tensors, widths=student.widths,
                       depths=student.depths, lambda_distill=ccfg.lambda_distill, lambda_logit=ccfg.lambda_logit,
                       regression=data.regression)
        opt.apply(opt.reduce())
        return time.perf_counter() - start

    seconds = {name: [] for name in sides}
    for repeat in range(args.step_repeats + 1):  # the first round warms up
        for name in (list(sides) if repeat % 2 == 0 else list(reversed(sides))):
            elapsed = run_side(name)
            if repeat:
                seconds[name].append(elapsed)
            print(f"{name}: {elapsed:.2f} s", flush=True)
    mask = batch["attention_mask"]
    result = {name: {"median_seconds": common.median(s), "runs": s} for name, s in seconds.items()}
    result["batch"] = {"rows": int(mask.shape[0]), "padded_length": int(mask.shape[1]), "tokens": int(mask.sum())}
    result["subnetworks"] = {"width stage": len(ccfg.widths), "depth stage": len(ccfg.widths) * len(ccfg.depths)}
    result["ratio"] = result["depth stage"]["median_seconds"] / result["width stage"]["median_seconds"]
    layers = student.shape["layers"]
    result["layer_work_ratio"] = float(np.sum([len(student.kept(d)) for d in student.depths]) / layers)
    return result


def markdown(lat, step, threads, seq_len):
    lines = []
    if lat:
        sizes = list(lat[0]["latency"])
        header = (["width", "depth", "layers", "heads", "parameters", "encoder parameters"]
                  + [f"batch {b} ms" for b in sizes] + [f"ratio to 1.0 x 1.0 (batch {b})" for b in sizes])
        table = [[f"{r['width']:g}", f"{r['depth']:g}", r["layers"], r["heads"], f"{r['parameters']:,}",
                  f"{r['encoder_parameters']:,}"] + [r["latency"][b]["median_seconds"] * 1000 for b in sizes]
                 + [r["ratio_to_full"][b] for b in sizes] for r in lat]
        lines += [f"Paddle Inference, CPU, {threads} thread(s), MKLDNN off; sequence {seq_len}, all tokens real.", "",
                  common.md_table(header, table), ""]
    if step:
        lines += [f"Step on one batch of {step['batch']['rows']} rows padded to {step['batch']['padded_length']} "
                  f"({step['batch']['tokens']} tokens), {threads} thread(s), median of the timed repeats:", "",
                  common.md_table(["stage", "sub-networks per step", "seconds per step"],
                                  [[name, step["subnetworks"][name], step[name]["median_seconds"]]
                                   for name in ("width stage", "depth stage")]),
                  "", f"depth / width: {step['ratio']:.2f}x"]
    return "\n".join(lines) + "\n"


def _quiet_paddlenlp():
    from paddlenlp.utils.log import logger

    logger.set_level("WARNING")  # its INFO lines ("Configuration saved in ...") are noise here


def main(argv=None):
    args = parse_args(argv)
    common.set_threads(args.threads)
    import dynabert  # noqa: F401  (zlib before paddle)
    _quiet_paddlenlp()
    lat = None if args.skip == "latency" else latency(args)
    step = None if args.skip == "step" else step_time(args)
    result = {"latency": lat, "step_time": step, "threads": args.threads, "machine": common.machine_info("cpu")}
    md = markdown(lat, step, args.threads, args.seq_len)
    common.write_result(args.out, "depth_bench", result, md)
    print(md, flush=True)


if __name__ == "__main__":
    main()
