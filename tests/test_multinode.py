"""Two "nodes" on this machine: two ``dynabert-launch --nnodes 2 --node_rank {0,1}`` invocations with a
localhost master and separate, node-local ``run.out_dir``s (no shared filesystem). Rank 0 decides (resume
point, stage completion) and everything another rank needs reaches it through the process group.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import paddle
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.dist

TINY = os.path.join(ROOT, "configs", "tiny.yaml")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_")}
    env.update(GLUE_DIR="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=ROOT, **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(model_dir, out, *extra):
    return ["--config", TINY, "--set", f"model.name_or_path={model_dir}", "--set", f"run.out_dir={out}",
            "--set", "finetune.epochs=1", *extra]


def _launch(args, *, nnodes=1, nproc=2, node_rank=0, port=None, restarts=0, env=None):
    """``nnodes`` > 1: this node's flags (--nnodes, --node_rank, --master, --host); 1: none (a single node,
    or nodes that come from the environment)."""
    cli = [sys.executable, "-m", "launcher", "--device", "cpu", "--nproc_per_node", str(nproc),
           "--max_restarts", str(restarts), *args]
    if nnodes > 1:
        cli += ["--nnodes", str(nnodes), "--node_rank", str(node_rank), "--master", f"127.0.0.1:{port}",
                "--host", "127.0.0.1"]
    return subprocess.Popen(cli, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _two_nodes(model_dir, tmp_path, name, *extra, restarts=0, env=None, node_env=None):
    """Both nodes to completion. ``node_env(n)``: node n's extra variables, which then say everything about
    the nodes (no node flags)."""
    port = _free_port()
    outs = [str(tmp_path / f"{name}_node{n}") for n in (0, 1)]
    procs = [_launch(_config(model_dir, outs[n], *extra), nnodes=1 if node_env else 2, nproc=1, node_rank=n,
                     port=port, restarts=restarts, env=_env(**node_env(n)) if node_env else env) for n in (0, 1)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return outs, logs


def _supernet(out):
    return {k: v.numpy() for k, v in paddle.load(os.path.join(out, "compress", "supernet.pdparams")).items()}


def _same_parameters(a, b, atol=1e-6):
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=atol, err_msg=name)


@pytest.fixture(scope="module")
def one_node(tiny_model_dir, tmp_path_factory):
    """The whole pipeline on one node with 2 processes: the reference, and a teacher for the kill test."""
    out = str(tmp_path_factory.mktemp("one_node"))
    proc = _launch(_config(tiny_model_dir, out))
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
    _same_parameters(_supernet(one_node), _supernet(node0))
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
    (node0, node1), logs = _two_nodes(tiny_model_dir, tmp_path, "killed", *compress, restarts=1, env=_env(**fault))
    assert (tmp_path / "fired").read_text().startswith("rank 1 killed itself at step 13")
    assert "restart 1/1" in logs[0] and "restart 1/1" in logs[1], logs
    assert "compress: resuming from" in logs[0] and "step_00000012" in logs[0]
    _same_parameters(_supernet(straight), _supernet(node0))
    assert not os.path.isdir(os.path.join(node1, "checkpoints"))  # node 1 resumed from rank 0's checkpoint


def _free_slurm_job_id() -> int:
    """A job id whose default master port (PORT_BASE + id mod PORT_SPAN) nothing here listens on."""
    from launcher.slurm import PORT_BASE, PORT_SPAN

    for offset in range(PORT_SPAN):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", PORT_BASE + offset))
            except OSError:
                continue
            return 7 * PORT_SPAN + offset
    raise AssertionError("no free port in the Slurm default range")


def test_two_nodes_from_slurm_variables_alone(tiny_model_dir, tmp_path):
    """What `srun --ntasks-per-node=1 dynabert-launch ...` gives each node, for two "nodes" on this machine
    (127.0.0.[1-2]: the first is loopback, reachable by both) and no --nnodes, --node_rank or --master: the
    nodes find each other and train as one 2-process job."""
    job_id = _free_slurm_job_id()

    def srun(node_id):
        return {"SLURM_JOB_ID": str(job_id), "SLURM_NNODES": "2", "SLURM_NODEID": str(node_id),
                "SLURM_JOB_NODELIST": "127.0.0.[1-2]", "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NUM_TASKS": "2"}

    (node0, node1), logs = _two_nodes(tiny_model_dir, tmp_path, "slurm", "--set", "run.stages=[finetune]",
                                      "--set", "finetune.max_steps=4", node_env=srun)
    for n in (0, 1):
        assert f"--nnodes 2 (SLURM_NNODES), --node_rank {n} (SLURM_NODEID), --master 127.0.0.1:" in logs[n], logs[n]
        assert f"1 process(es) x 2 nodes (this is node {n})" in logs[n]
    assert "global batch 32 (16 per rank x 2)" in logs[0]  # one job of two ranks
    assert os.path.isfile(os.path.join(node0, "teacher", "model_state.pdparams"))
    assert not os.path.exists(os.path.join(node1, "teacher"))  # rank 1 (node 1) writes nothing
    assert os.path.isfile(os.path.join(node1, "logs", "node1", "workerlog.0"))
