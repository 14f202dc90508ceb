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
    cli = [sys.executable, "-m", "launcher", "--device", "cpu", "--nproc_per_node", str(nproc),
           "--max_restarts", str(restarts), *args]
    if nnodes > 1:
        cli += ["--nnodes", str(nnodes), "--node_rank", str(node_rank), "--master", f"127.0.0.1:{port}",
                "--host", "127.0.0.1"]
    return subprocess.Popen(cli, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _two_nodes(model_dir, tmp_path, name, *extra, restarts=0, env=None):
    outs, procs = _start_two_nodes(model_dir, tmp_path, name, *extra, restarts=restarts, env=env)
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return outs, logs


def _start_two_nodes(model_dir, tmp_path, name, *extra, restarts=0, env=None, per_node=((), ())):
    """``per_node``: arguments for node 0 and node 1 alone (what differs between the nodes)."""
    port = _free_port()
    outs = [str(tmp_path / f"{name}_node{n}") for n in (0, 1)]
    procs = [_launch(_config(model_dir, outs[n], *extra, *per_node[n]), nnodes=2, nproc=1, node_rank=n, port=port,
                     restarts=restarts, env=env) for n in (0, 1)]
    return outs, procs


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
                                env=_env(DYNABERT_PEER_TIMEOUT=str(PEER_TIMEOUT_S)))
    codes, logs = _ended(procs)
    assert codes == [2, 2], logs
    message = "model directory /nonexistent does not exist"
    other = 1 - failing
    assert _last_error(logs[failing]) == (
        f"error: rank {failing} (node {failing}, local rank 0) failed with exit code 2"
        f" (see {tmp_path}/bad_node{failing}/logs/node{failing}/workerlog.0): {message}")
    assert _last_error(logs[other]) == (
        f"error: rank {other} (node {other}, local rank 0) failed with exit code 2"
        f" (see {tmp_path}/bad_node{other}/logs/node{other}/workerlog.0): rank {failing} failed: {message}")
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
import os, signal
from launcher.fleet_setup import init_collectives
import dynabert.pipeline, paddlenlp
init_collectives()
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
                                env=_env(DYNABERT_PEER_TIMEOUT=str(PEER_TIMEOUT_S)))
    codes, logs = _ended(procs)
    code, why = expected
    assert codes[1] != 0 and codes[0] == (128 - code if code < 0 else code), logs
    kind = "lost a peer rank (exit code 5; see" if code == 5 else "failed with exit code -9 (see"
    assert _last_error(logs[0]).startswith(f"error: rank 0 (node 0, local rank 0) {kind} "), logs[0][-3000:]
    assert why in _last_error(logs[0]), logs[0][-3000:]
