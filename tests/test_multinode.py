"""Two "nodes" on this machine: two ``dynabert-launch --nnodes 2 --node_rank {0,1}`` invocations with a
localhost master and separate, node-local ``run.out_dir``s (no shared filesystem). Rank 0 decides (resume
point, stage completion) and everything another rank needs reaches it through the process group. Kills and
restarts across nodes: tests/test_crash_matrix.py.
"""
import json
import os
import socket

import pytest

from tests.jobs import TINY, free_port, job_env, launch, load_params, same_parameters

pytestmark = pytest.mark.dist


def _config(model_dir, out, *extra):
    return ["--config", TINY, "--set", f"model.name_or_path={model_dir}", "--set", f"run.out_dir={out}",
            "--set", "finetune.epochs=1", *extra]


def _two_nodes(model_dir, tmp_path, name, *extra, restarts=0, env=None, node_env=None):
    """Both nodes to completion. ``node_env(n)``: node n's extra variables, which then say everything about
    the nodes (no node flags)."""
    port = free_port()
    outs = [str(tmp_path / f"{name}_node{n}") for n in (0, 1)]
    procs = [launch(_config(model_dir, outs[n], *extra), nnodes=1 if node_env else 2, nproc=1, node_rank=n,
                    port=port, restarts=restarts, env=job_env(**node_env(n)) if node_env else env) for n in (0, 1)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return outs, logs


def _supernet(out):
    return load_params(os.path.join(out, "compress", "supernet.pdparams"))


@pytest.fixture(scope="module")
def one_node(tiny_model_dir, tmp_path_factory):
    """The whole pipeline on one node with 2 processes: the reference."""
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
