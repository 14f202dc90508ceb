"""Two "nodes" on this machine: two ``dynabert-launch --nnodes 2 --node_rank {0,1}`` invocations with a
localhost master and separate, node-local ``run.out_dir``s (no shared filesystem). Rank 0 decides (resume
point, stage completion) and everything another rank needs reaches it through the process group. Kills and
restarts across nodes: tests/test_crash_matrix.py.
"""
import os
import socket
import subprocess

import pytest

from tests.jobs import TINY, free_port, job_env, launch

pytestmark = pytest.mark.dist


def _config(model_dir, out, *extra):
    return ["--config", TINY, "--set", f"model.name_or_path={model_dir}", "--set", f"run.out_dir={out}",
            "--set", "finetune.epochs=1", *extra]


def _two_nodes(model_dir, tmp_path, name, *extra, restarts=0, env=None, node_env=None):
    """Both nodes to completion. ``node_env(n)``: node n's extra variables, which then say everything about
    the nodes (no node flags)."""
    outs, procs = _start_two_nodes(model_dir, tmp_path, name, *extra, restarts=restarts, env=env, node_env=node_env)
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return outs, logs


def _start_two_nodes(model_dir, tmp_path, name, *extra, restarts=0, env=None, per_node=((), ()), node_env=None):
    """``per_node``: arguments for node 0 and node 1 alone (what differs between the nodes)."""
    port = free_port()
    outs = [str(tmp_path / f"{name}_node{n}") for n in (0, 1)]
    procs = [launch(_config(model_dir, outs[n], *extra, *per_node[n]), nnodes=1 if node_env else 2, nproc=1,
                    node_rank=n, port=port, restarts=restarts,
                    env=job_env(**node_env(n)) if node_env else env) for n in (0, 1)]
    return outs, procs


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


# --- one node fails: every node ends, within DYNABERT_PEER_TIMEOUT, with the failing rank's error ----------

PEER_TIMEOUT_S = 30  # short for the test; the wait below is generous: only a job that never ends fails it
GENEROUS_S = 300


def _ended(procs):
    """Each launcher's exit code and output; a launcher still running after GENEROUS_S fails the test (the
    bug: a node waiting for ever for a peer that is gone), after being stopped with everything it started."""
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=GENEROUS_S)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.terminate()  # dynabert-launch stops its Paddle launcher and workers on SIGTERM
            pytest.fail(f"a node was still running {GENEROUS_S} s later: " + "\n".join(
                q.communicate()[0][-3000:] for q in procs))
    return [p.returncode for p in procs], logs


def _last_error(output):
    return [line for line in output.splitlines() if line.startswith("error:")][-1]


@pytest.mark.parametrize("failing", [1, 0])
def test_bad_input_on_one_node_ends_both_with_its_error_and_no_restart(tiny_model_dir, tmp_path, failing):
    """Node ``failing`` alone is given a model directory that does not exist (the worker finds out after
    joining the process group). Its rank posts the error; the other node's rank, waiting for it on the
    store, ends with the same line and exit code 2, so neither launcher restarts (--max_restarts 1)."""
    bad = ("--set", "model.name_or_path=/nonexistent")
    per_node = (bad, ()) if failing == 0 else ((), bad)
    _, procs = _start_two_nodes(tiny_model_dir, tmp_path, "bad", restarts=1, per_node=per_node,
                                env=job_env(DYNABERT_PEER_TIMEOUT=str(PEER_TIMEOUT_S)))
    codes, logs = _ended(procs)
    assert codes == [2, 2], logs
    message = "model directory /nonexistent does not exist"
    other = 1 - failing
    why = "bad input; not restarted: the next attempt would read the same input"
    assert _last_error(logs[failing]) == (
        f"error: rank {failing} (node {failing}, local rank 0) failed with exit code 2"
        f" ({why}; see {tmp_path}/bad_node{failing}/logs/node{failing}/workerlog.0): {message}")
    assert _last_error(logs[other]) == (
        f"error: rank {other} (node {other}, local rank 0) failed with exit code 2"
        f" ({why}; see {tmp_path}/bad_node{other}/logs/node{other}/workerlog.0): rank {failing} failed: {message}")
    assert "restart 1/1" not in logs[0] + logs[1]


# Stand-ins for node 1's worker, each with the real worker's imports (so that both nodes reach the
# rendezvous about together, whatever the load).
_FAILS_BEFORE_JOINING = """\
import sys
from launcher.fleet_setup import init_collectives
import dynabert.pipeline, paddlenlp
print("error: this worker failed before joining the process group", file=sys.stderr, flush=True)
sys.exit(1)
"""
_KILLED_AFTER_JOINING = """\
import os, signal, sys
from launcher.config import load_config
from launcher.fleet_setup import init_collectives
from launcher.run_dir import check_fresh_start
from launcher.worker import parse_args
import dynabert.pipeline, paddlenlp
args = parse_args(sys.argv[1:])
comms = init_collectives()
check_fresh_start(load_config(args.config, args.set), comms, args.resume, args.overwrite)  # as the worker does
print("joined; now SIGKILL, without a word to the other ranks", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("script, expected", [
    (_FAILS_BEFORE_JOINING, (-9, "rank 0: the process group did not form within 30 s: a rank has probably failed"
                                 " before joining (its node's output says why; DYNABERT_PEER_TIMEOUT sets the limit,"
                                 " 0 disables)")),
    (_KILLED_AFTER_JOINING, (5, "rank 1 has given no sign of life for ")),
], ids=["fails-before-joining", "killed-after-joining"])
def test_a_peer_that_vanishes_ends_the_other_node_after_the_peer_timeout(tiny_model_dir, tmp_path, script, expected):
    """Node 1's worker dies without telling anyone: before the process group formed (Paddle's rendezvous
    would keep rank 0 waiting 900 s, holding the interpreter's lock), or after, while rank 0 waits on the
    store for every rank to finish preparing its data (no collective to break). Node 0 ends on its own."""
    worker = tmp_path / "node1_worker.py"
    worker.write_text(script)
    _, procs = _start_two_nodes(tiny_model_dir, tmp_path, "vanish", per_node=((), ("--worker", str(worker))),
                                env=job_env(DYNABERT_PEER_TIMEOUT=str(PEER_TIMEOUT_S)))
    codes, logs = _ended(procs)
    code, why = expected
    assert codes[1] != 0 and codes[0] == (128 - code if code < 0 else code), logs
    kind = "lost a peer rank (exit code 5; see" if code == 5 else "failed with exit code -9 (see"
    assert _last_error(logs[0]).startswith(f"error: rank 0 (node 0, local rank 0) {kind} "), logs[0][-3000:]
    assert why in _last_error(logs[0]), logs[0][-3000:]
