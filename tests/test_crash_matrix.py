"""The crash matrix: the whole pipeline in one ``dynabert-launch`` job with ``--max_restarts``, as users run
it, killed with SIGKILL in every stage at every kind of point, ends exactly where the uninterrupted job
ends: the same results.json, the same exported models and final parameters (1e-6), each step recorded
once, and no temporary file or directory left behind.

One job carries many faults (each addressed by stage and point, each firing once: ``DYNABERT_FAULT``,
dynabert/faults.py), so a few jobs cover the matrix:

| stage          | mid-stage    | after a checkpoint | epoch boundary | checkpoint write | after the stage |
|----------------|--------------|--------------------|----------------|------------------|-----------------|
| finetune       | 1 node, r1   | 2 nodes, r0        | 1 node, r0     |                  | 1 node, r0      |
| compress       | 2 nodes, r1  | 1 node, r0         | 1 node, r1     | 1 node, r0       | 2 nodes, r1     |
| compress_depth | 1 node, r1   | 2 nodes, r0        | 1 node, r0     | 1 node, r0       |                 |
| export         | 1 node, r1   |                    |                |                  | 1 node, r0      |
| select         | 1 node, r0   |                    |                |                  |                 |

(r0/r1: the global rank that dies; on two nodes, rank r lives on node r, so the kill lands on each node
in turn, and the nodes share no filesystem: each has its own run directory, and only rank 0's is written.)
Training is deterministic given (seed, rank, step), with dropout on, so "the same" is exact. A third job pair
runs the opt-in training options (sandwich sampling, patience, the bf16 and bucketed all-reduce, the refine
stage) killed twice in compress and twice in refine.
"""
import json
import os
import re

import pytest

from tests.conftest import job_report
from tests.jobs import TINY, free_port, job_env, launch, load_params, same_parameters

pytestmark = pytest.mark.dist

# 640 training rows at a global batch of 32: 20 steps an epoch, 2 epochs per stage, a checkpoint every
# 8 steps, every evaluation at an epoch's end (eval_every 0): steps 20 and 40.
SETTINGS = ["finetune.epochs=2", "compress.optim.epochs=2", "compress.optim.eval_every=0",
            "data.train_limit=640", "data.validation_rows=100", "data.dev_limit=100", "model.dropout=0.1",
            "compress.depths=[1.0,0.5]", "compress.widths=[1.0,0.5]", "run.checkpoint_every_steps=8",
            "run.stages=[finetune,compress,compress_depth,export,select]", "select.runtimes=[onnxruntime]",
            "select.precisions=[fp32]", "select.min_runs=1", "select.batch_size=4", "select.seq_len=16"]

ONE_NODE_FAULTS = [
    dict(rank=1, stage="finetune", step=13),                        # mid-stage
    dict(rank=0, stage="finetune", step=20),                        # the epoch boundary (its evaluation done)
    dict(rank=0, stage="finetune", point="stage_done"),             # between finetune and compress
    dict(rank=0, stage="compress", step=16),                        # right after checkpoint 16
    dict(rank=1, stage="compress", step=20),                        # the epoch boundary
    dict(rank=0, stage="compress", point="checkpoint_write", step=32),  # files written, no manifest yet
    dict(rank=1, stage="compress_depth", step=11),                  # mid-stage, in a process that skips compress
    dict(rank=0, stage="compress_depth", step=20),
    dict(rank=0, stage="compress_depth", point="checkpoint_write", step=24),
    dict(rank=1, stage="export", point="model", step=1),            # after the first exported sub-model
    dict(rank=0, stage="export", point="stage_done"),               # between export and select
    dict(rank=0, stage="select", point="model", step=2),            # mid-select (rank 0 measures alone)
]
TWO_NODE_FAULTS = [
    dict(rank=0, stage="finetune", step=24),    # node 0, right after checkpoint 24
    dict(rank=1, stage="compress", step=5),     # node 1, mid-stage
    dict(rank=1, stage="compress", point="stage_done"),
    dict(rank=0, stage="compress_depth", step=8),  # node 0, right after checkpoint 8
]
LEFTOVER = re.compile(r"^\..+\.(tmp|old)-")


def _args(model_dir, out, *extra):
    sets = [f"model.name_or_path={model_dir}", f"run.out_dir={out}", *SETTINGS, *extra]
    return ["--config", TINY] + [a for s in sets for a in ("--set", s)]


def _faults(tmp_path, faults):
    specs = [",".join(f"{k}={v}" for k, v in f.items()) + f",once={tmp_path / f'fault{i}'}"
             for i, f in enumerate(faults)]
    return job_env(DYNABERT_FAULT=";".join(specs))


def _finish(procs, outs):
    logs = [p.communicate(timeout=1500)[0] for p in procs]
    for p, log, out in zip(procs, logs, outs):
        assert p.returncode == 0, job_report(log, os.path.join(out, "logs"))
    return logs


def _fired(tmp_path, count):
    return [(tmp_path / f"fault{i}").read_text().strip() for i in range(count) if (tmp_path / f"fault{i}").exists()]


@pytest.fixture(scope="module")
def straight(tiny_model_dir, tmp_path_factory):
    """The uninterrupted job: one node, two processes."""
    out = str(tmp_path_factory.mktemp("straight"))
    _finish([launch(_args(tiny_model_dir, out))], [out])
    return out


def _results(out, *, select=True):
    """results.json without what is measured rather than computed (timings, throughput, latency), and
    select's candidates' metrics with the chosen one's (ties between equally accurate candidates are broken
    by measured latency, so the chosen name may differ; its metric may not)."""
    results = json.load(open(os.path.join(out, "results.json")))
    for key in ("seconds", "throughput", "select"):
        results.pop(key, None)
    if select:
        table = json.load(open(os.path.join(out, "select", "candidates.json")))
        metrics = {row["name"]: row["metric"] for row in table["rows"]}
        results["select"] = {"metrics": metrics, "chosen": metrics[table["chosen"]]}
    return results


def _exported(out):
    root = os.path.join(out, "export")
    return {name: load_params(os.path.join(root, name, "model_state.pdparams")) for name in sorted(os.listdir(root))}


def _metric_rows(out):
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return sorted((r["kind"], r["step"]) for r in rows)


def _leftovers(out):
    return [os.path.join(folder, name) for folder, dirs, files in os.walk(out) for name in dirs + files
            if LEFTOVER.match(name)]


def _assert_same_run(straight, out, *, select=True):
    assert _results(out, select=select) == _results(straight, select=select)
    a, b = _exported(straight), _exported(out)
    assert sorted(a) == sorted(b) == ["width_0.5", "width_0.5_depth_0.5", "width_1", "width_1_depth_0.5"]
    for name in a:
        same_parameters(a[name], b[name])
    for stage in ("compress", "compress_depth"):
        path = os.path.join(stage, "supernet.pdparams")
        same_parameters(load_params(os.path.join(straight, path)), load_params(os.path.join(out, path)))
    rows = _metric_rows(out)
    assert len(rows) == len(set(rows)), "a step was recorded twice"
    assert rows == _metric_rows(straight)
    assert _leftovers(out) == []


def test_one_node_job_killed_in_every_stage_ends_as_the_uninterrupted_one(tiny_model_dir, straight, tmp_path):
    out = str(tmp_path / "killed")
    log, = _finish([launch(_args(tiny_model_dir, out), restarts=len(ONE_NODE_FAULTS),
                           env=_faults(tmp_path, ONE_NODE_FAULTS))], [out])
    fired = _fired(tmp_path, len(ONE_NODE_FAULTS))
    assert len(fired) == len(ONE_NODE_FAULTS), fired
    assert log.count("restart ") == len(ONE_NODE_FAULTS), log[-3000:]
    assert "compress_depth: resuming from" in log  # the depth stage resumed in a process that skipped compress
    _assert_same_run(straight, out)


def test_two_node_job_killed_on_each_node_in_turn_ends_as_the_uninterrupted_one(tiny_model_dir, straight,
                                                                                tmp_path):
    port, env = free_port(), _faults(tmp_path, TWO_NODE_FAULTS)
    outs = [str(tmp_path / f"node{n}") for n in (0, 1)]
    extra = ["run.stages=[finetune,compress,compress_depth,export]"]
    procs = [launch(_args(tiny_model_dir, outs[n], *extra), nnodes=2, nproc=1, node_rank=n, port=port,
                    restarts=len(TWO_NODE_FAULTS), env=env) for n in (0, 1)]
    _finish(procs, outs)
    assert len(_fired(tmp_path, len(TWO_NODE_FAULTS))) == len(TWO_NODE_FAULTS)
    _assert_same_run(straight, outs[0], select=False)
    assert json.load(open(os.path.join(outs[0], "results.json")))["world_size"] == 2
    # No shared filesystem: only rank 0 writes; node 1 resumed from rank 0's checkpoints, through the group.
    for written in ("checkpoints", "teacher", "compress", "compress_depth", "export", "results.json"):
        assert not os.path.exists(os.path.join(outs[1], written)), written
    assert os.path.isfile(os.path.join(outs[1], "logs", "node1", "workerlog.0"))


# The opt-in training options of issues 27 and 28 together, through the same path: sandwich sampling (the draw
# depends on the step), patience (its count is kept state), the bf16 all-reduce and the bucketed overlap.
OPTIONS = ["compress.width_sampling=sandwich", "compress.widths=[1.0,0.75,0.5,0.25]", "compress.optim.patience=2",
           "compress.optim.eval_every=5", "compress.optim.allreduce_dtype=bf16",
           "compress.optim.overlap_allreduce=true", "compress.optim.allreduce_bucket_mb=0.002",
           "refine.steps=12", "refine.widths=[0.5,0.25]", "refine.optim.eval_every=4",
           "run.stages=[finetune,compress,refine,export]", "compress.depths=[1.0]"]
OPTION_FAULTS = [dict(rank=1, stage="compress", step=7),    # mid-stage, between evaluations
                 dict(rank=0, stage="compress", step=16),   # right after checkpoint 16
                 dict(rank=1, stage="refine_width_0.5", step=10),   # the first refined width, after checkpoint 8
                 dict(rank=0, stage="refine_width_0.5", point="stage_done")]  # between the two refined widths


@pytest.fixture(scope="module")
def straight_options(tiny_model_dir, tmp_path_factory):
    """The uninterrupted job with the opt-in options: one node, two processes."""
    out = str(tmp_path_factory.mktemp("straight_options"))
    _finish([launch(_args(tiny_model_dir, out, *OPTIONS))], [out])
    return out


def _assert_same_options_run(straight, out):
    assert _results(out, select=False) == _results(straight, select=False)
    a, b = _exported(straight), _exported(out)
    assert sorted(a) == sorted(b) == ["width_0.25", "width_0.5", "width_0.75", "width_1"]
    for name in a:
        same_parameters(a[name], b[name])
    rows = _metric_rows(out)
    assert rows == _metric_rows(straight)
    assert _leftovers(out) == []
    return rows


def test_the_opt_in_training_options_survive_kills_as_the_uninterrupted_job(tiny_model_dir, straight_options,
                                                                            tmp_path):
    killed_out = str(tmp_path / "killed")
    log, = _finish([launch(_args(tiny_model_dir, killed_out, *OPTIONS), restarts=len(OPTION_FAULTS),
                           env=_faults(tmp_path, OPTION_FAULTS))], [killed_out])
    assert len(_fired(tmp_path, len(OPTION_FAULTS))) == len(OPTION_FAULTS)
    assert log.count("restart ") == len(OPTION_FAULTS)
    rows = _assert_same_options_run(straight_options, killed_out)
    trained = max(step for kind, step in rows if kind == "compress")
    assert 16 < trained < 40 and f"compress: stopping at step {trained} of 40" in log  # patience, after both kills
    assert "refine_width_0.5: resuming at step 8" in log and "refine/width_0.5: already complete" in log
    refined = [(kind, step) for kind, step in rows if kind.startswith("refine_width_")]
    assert refined == [(f"refine_width_{w}{suffix}", s) for w in ("0.25", "0.5")  # logged every 10 steps
                       for suffix, steps in (("", (10, 12)), ("_eval", (0, 4, 8, 12))) for s in steps]


REFINE_TWO_NODE_FAULTS = [dict(rank=1, stage="refine_width_0.25", step=10)]  # node 1, after refine's checkpoint 8


def test_refine_on_two_nodes_killed_on_node_1_ends_as_the_one_node_job(tiny_model_dir, straight_options, tmp_path):
    """Refine reads compress's kept models and writes its own on node 0's disk alone: node 1 receives them
    through the group, at the start and after its restart."""
    port, env = free_port(), _faults(tmp_path, REFINE_TWO_NODE_FAULTS)
    outs = [str(tmp_path / f"node{n}") for n in (0, 1)]
    procs = [launch(_args(tiny_model_dir, outs[n], *OPTIONS), nnodes=2, nproc=1, node_rank=n, port=port,
                    restarts=1, env=env) for n in (0, 1)]
    _finish(procs, outs)
    assert len(_fired(tmp_path, 1)) == 1
    _assert_same_options_run(straight_options, outs[0])
    for written in ("checkpoints", "teacher", "compress", "refine", "export", "results.json"):
        assert not os.path.exists(os.path.join(outs[1], written)), written
