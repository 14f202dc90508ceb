"""Two "nodes" on this machine: two ``dynabert-launch --nnodes 2 --node_rank {0,1}`` invocations with a
localhost master and separate, node-local ``run.out_dir``s (no shared filesystem). Rank 0 decides (resume
point, stage completion) and everything another rank needs reaches it through the process group.
"""
import json
import os

import pytest

from tests.jobs import TINY, free_port, job_env, launch, load_params, same_parameters

pytestmark = pytest.mark.dist


def _config(model_dir, out, *extra):
    return ["--config", TINY, "--set", f"model.name_or_path={model_dir}", "--set", f"run.out_dir={out}",
            "--set", "finetune.epochs=1", *extra]


def _two_nodes(model_dir, tmp_path, name, *extra, restarts=0, env=None):
    port = free_port()
    outs = [str(tmp_path / f"{name}_node{n}") for n in (0, 1)]
    procs = [launch(_config(model_dir, outs[n], *extra), nnodes=2, nproc=1, node_rank=n, port=port,
                    restarts=restarts, env=env) for n in (0, 1)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return outs, logs


def _supernet(out):
    return load_params(os.path.join(out, "compress", "supernet.pdparams"))


@pytest.fixture(scope="module")
def one_node(tiny_model_dir, tmp_path_factory):
    """The whole pipeline on one node with 2 processes: the reference, and a teacher for the kill test."""
    out = str(tmp_path_factory.mktemp("one_node"))
    proc = launch(_config(tiny_model_dir, out))
    log = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, log[-4000:]
    return out


def test_two_nodes_without_a_shared_filesystem_match_one_node(tiny_model_dir, one_node, tmp_path):
    (node0, node1), logs = _two_nodes(tiny_model_dir, tmp_path, "two")
    expected = json.load(open(os.path.join(one_node, "results.json")))
    got = json.load(open(os.path.join(node0, "results.json")))
    assert got["world_size"] == expected["world_size"] == 2
    assert got["widths"] == expected["widths"] and got["teacher"] == expected["teacher"]
    assert got["compress_best"] == expected["compress_best"]
    same_parameters(_supernet(one_node), _supernet(node0))
    # Node 1 wrote no run files: only rank 0 writes, and node 1 never needed to read them.
    assert not os.path.exists(os.path.join(node1, "teacher")) and not os.path.exists(os.path.join(node1, "compress"))
    assert os.path.isfile(os.path.join(node1, "logs", "node1", "workerlog.0"))


def test_worker_killed_on_node1_both_nodes_restart_and_match(tiny_model_dir, one_node, tmp_path):
    """Rank 1 (node 1) SIGKILLs itself after step 13 of compress (checkpoint 12 is on node 0's disk only).
    Node 1's launcher restarts it; node 0's rank sees its peer gone (gloo gives up) and its launcher
    restarts too; both resume from rank 0's checkpoint and end with the uninterrupted run's parameters."""
    compress = ("--set", f"model.teacher={os.path.join(one_node, 'teacher')}", "--set", "run.stages=[compress]",
                "--set", "compress.optim.max_steps=24", "--set", "run.checkpoint_every_steps=6",
                "--set", "compress.optim.eval_every=8", "--set", "model.dropout=0.1")
    (straight, _), _ = _two_nodes(tiny_model_dir, tmp_path, "straight", *compress)
    fault = {"DYNABERT_FAULT": f"rank=1,step=13,once={tmp_path / 'fired'}"}
    (node0, node1), logs = _two_nodes(tiny_model_dir, tmp_path, "killed", *compress, restarts=1, env=job_env(**fault))
    assert (tmp_path / "fired").read_text().startswith("rank 1 killed itself at step 13")
    assert "restart 1/1" in logs[0] and "restart 1/1" in logs[1], logs
    assert "compress: resuming from" in logs[0] and "step_00000012" in logs[0]
    same_parameters(_supernet(straight), _supernet(node0))
    assert not os.path.isdir(os.path.join(node1, "checkpoints"))  # node 1 resumed from rank 0's checkpoint
