"""Slurm's variables as defaults for --nnodes, --node_rank and --master, as data: the node list's compressed
forms, which flags win, the port, and the set-ups that would hang (a batch script, a partial step, several
tasks per node, a node name that resolves to loopback) refused in one line. tests/test_multinode.py runs a
real two-node job from these variables."""
import pytest

from dynabert.errors import UserError
from launcher.cli import main
from launcher.slurm import PORT_BASE, PORT_SPAN, expand_hostlist, job_from_env, node_flags


@pytest.mark.parametrize("text, hosts", [
    ("node01", ["node01"]),
    ("a1,b2", ["a1", "b2"]),
    ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
    ("node[8-11]", ["node8", "node9", "node10", "node11"]),           # no padding: the numbers as they come
    ("node[098-101]", ["node098", "node099", "node100", "node101"]),  # the lower bound's width is kept
    ("n[1]", ["n1"]),
    ("gpu-[1-2]-ib", ["gpu-1-ib", "gpu-2-ib"]),
    ("a[1-2],b[3,5],login", ["a1", "a2", "b3", "b5", "login"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
    ("127.0.0.[1-2]", ["127.0.0.1", "127.0.0.2"]),
    ("node-a.cluster.example", ["node-a.cluster.example"]),
    (" node1 ", ["node1"]),
])
def test_expand_hostlist(text, hosts):
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("text", ["", "a,,b", "node[1-", "node]1[", "node[]", "node[a-b]", "node[3-1]", "n[1[2]]",
                                  "node[1-2", "node[1-2]x]"])
def test_a_nodelist_that_cannot_be_read_is_named(text):
    with pytest.raises(UserError, match=r"^SLURM_JOB_NODELIST="):
        expand_hostlist(text)


def srun_env(node_id, nodelist="node[01-02]", nnodes=2, job_id="4321", **extra):
    """What `srun --ntasks-per-node=1` gives each task of a job on ``nnodes`` nodes."""
    env = {"SLURM_NNODES": str(nnodes), "SLURM_NODEID": str(node_id), "SLURM_JOB_NODELIST": nodelist,
           "SLURM_JOB_ID": job_id, "SLURM_STEP_NUM_NODES": str(nnodes), "SLURM_STEP_NUM_TASKS": str(nnodes)}
    return {**env, **extra}


def resolve(host):
    return {"node01": "10.0.0.1", "localhost": "127.0.0.1", "127.0.0.1": "127.0.0.1", "node0": "127.0.1.1"}[host]


def test_every_flag_defaults_from_slurm():
    nnodes, rank, master, note = node_flags(None, None, None, srun_env(1), resolve)
    assert (nnodes, rank, master) == (2, 1, f"10.0.0.1:{PORT_BASE + 4321}")
    assert note == (f"from Slurm: --nnodes 2 (SLURM_NNODES), --node_rank 1 (SLURM_NODEID), --master 10.0.0.1:"
                    f"{PORT_BASE + 4321} (first node of SLURM_JOB_NODELIST=node[01-02], port {PORT_BASE} + "
                    f"SLURM_JOB_ID mod {PORT_SPAN})")


def test_the_port_follows_the_job_id_and_stays_below_the_ephemeral_range():
    ports = {job_from_env(srun_env(0, job_id=str(j))).port for j in (0, 1, 9999, 10000, 123456789)}
    assert ports == {PORT_BASE, PORT_BASE + 1, PORT_BASE + 9999, PORT_BASE + 6789}
    assert PORT_BASE + PORT_SPAN <= 32768
    assert job_from_env({k: v for k, v in srun_env(0).items() if k != "SLURM_JOB_ID"}).port == PORT_BASE


def test_explicit_flags_win():
    assert node_flags(2, 0, "10.9.9.9:7000", srun_env(1), resolve) == (2, 0, "10.9.9.9:7000", "")
    nnodes, rank, master, note = node_flags(None, None, "10.9.9.9:7000", srun_env(1), resolve)
    assert (nnodes, rank, master) == (2, 1, "10.9.9.9:7000") and "--master" not in note
    # --nnodes 1 in a multi-node allocation: this node alone, Slurm's rank and master do not apply
    assert node_flags(1, None, None, srun_env(1), resolve) == (1, 0, None, "")


def test_outside_slurm_or_on_one_node_nothing_changes():
    assert node_flags(None, None, None, {}, resolve) == (1, 0, None, "")
    assert node_flags(None, None, None, srun_env(0, nodelist="node01", nnodes=1), resolve) == (1, 0, None, "")
    assert node_flags(2, 1, "10.0.0.1:8090", {"SLURM_NNODES": "junk"}, resolve) == (2, 1, "10.0.0.1:8090", "")


@pytest.mark.parametrize("env, message", [
    (srun_env(0, nodelist="node[01-03]"), "SLURM_JOB_NODELIST=node[01-03] names 3 node(s) but SLURM_NNODES=2"),
    (srun_env(2), "SLURM_NODEID=2: must be below SLURM_NNODES=2"),
    (srun_env(0, SLURM_NNODES="two"), "SLURM_NNODES='two': expected an integer >= 1"),
    ({k: v for k, v in srun_env(0).items() if not k.startswith("SLURM_STEP")},
     "SLURM_NNODES=2 but this is not an srun step"),
    (srun_env(0, SLURM_STEP_NUM_NODES="1", SLURM_STEP_NUM_TASKS="1"), "SLURM_STEP_NUM_NODES=1 but SLURM_NNODES=2"),
    (srun_env(0, SLURM_STEP_NUM_TASKS="8"), "SLURM_STEP_NUM_TASKS=8 on 2 nodes: start one dynabert-launch per node"),
    (srun_env(0, nodelist="node0,node1"), "SLURM_JOB_NODELIST: the first node node0 resolves to 127.0.1.1 here"),
])
def test_set_ups_that_would_hang_are_refused(env, message):
    with pytest.raises(UserError) as e:
        node_flags(None, None, None, env, resolve)
    assert str(e.value).startswith(message)


def test_localhost_and_ip_literals_may_be_loopback():
    """Two "nodes" on one machine, as the tests run them."""
    assert node_flags(None, None, None, srun_env(0, nodelist="localhost,127.0.0.1"), resolve)[2] == \
        f"127.0.0.1:{PORT_BASE + 4321}"
    assert node_flags(None, None, None, srun_env(1, nodelist="127.0.0.[1-2]"), resolve)[:3] == \
        (2, 1, f"127.0.0.1:{PORT_BASE + 4321}")


def test_dynabert_launch_takes_the_nodes_from_slurm(tmp_path, capsys, monkeypatch):
    for key, value in srun_env(1, nodelist="127.0.0.[1-2]").items():
        monkeypatch.setenv(key, value)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    assert main(["--config", str(cfg), "--out_dir", str(tmp_path), "--nproc_per_node", "2", "--device", "cpu",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"--nnodes 2 --rank 1 --master 127.0.0.1:{PORT_BASE + 4321} --host 127.0.0.1 " in out
    assert "# from Slurm: --nnodes 2 (SLURM_NNODES), --node_rank 1 (SLURM_NODEID)" in out
    assert f"--log_dir {tmp_path / 'logs' / 'node1'} " in out
    assert main(["--config", str(cfg), "--nnodes", "1", "--device", "cpu", "--dry-run"]) == 0
    assert "--nnodes" not in capsys.readouterr().out
