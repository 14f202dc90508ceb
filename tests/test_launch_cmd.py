"""The launch command as data, plus the real failure and restart paths through Paddle's launcher."""
import io
import time

import pytest

import dynabert  # noqa: F401  (before anything that may import paddle)
from dynabert.errors import UserError
from launcher.cli import build_parser, main, pump_output, worker_command
from launcher.launch_cmd import LaunchOptions, build_launch_command, env_diff

PY = "/venv/bin/python"
WORKER = ["-m", "launcher.worker", "--config", "c.yaml"]
LAUNCH = [PY, "-m", "paddle.distributed.launch"]
TAIL = [PY, "-m", "launcher.worker", "--config", "c.yaml"]
# What a user's shell may carry in: stale per-worker variables from an enclosing job must not leak through.
BASE_ENV = {"PATH": "/usr/bin", "HOME": "/home/u", "PADDLE_TRAINER_ID": "3", "PADDLE_MASTER": "1.2.3.4:1",
            "MASTER_ADDR": "1.2.3.4", "PADDLE_NNODES": "4", "MKL_NUM_THREADS": "16"}


def build(cpu_count=2, base_env=BASE_ENV, **kw):
    kw.setdefault("log_dir", "out/logs")
    return build_launch_command(LaunchOptions(**kw), WORKER, python=PY, base_env=base_env, cpu_count=cpu_count)


def test_single_node_cpu_two_processes():
    argv, env = build(nproc_per_node=2, device="cpu", base_env={**BASE_ENV, "CUDA_VISIBLE_DEVICES": "0"})
    assert argv == LAUNCH + ["--nproc_per_node", "2", "--log_dir", "out/logs", "--job_id", "dynabert",
                             "--max_restart", "0"] + TAIL
    # 2 CPUs / 2 processes = 1 thread each, set for every threading library Paddle and numpy use.
    assert [env[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")] == ["1", "1", "1"]
    assert env["PADDLE_DISTRI_BACKEND"] == "gloo"
    assert "CUDA_VISIBLE_DEVICES" not in env  # its mere presence makes the launcher assume GPUs
    assert env["PYTHONUNBUFFERED"] == "1"
    for stale in ("PADDLE_TRAINER_ID", "PADDLE_MASTER", "MASTER_ADDR", "PADDLE_NNODES"):
        assert stale not in env
    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/home/u"


def test_single_node_gpu_four_devices():
    argv, env = build(nproc_per_node=4, devices="0,1,2,3", device="gpu", cpu_count=8,
                      base_env={**BASE_ENV, "PADDLE_DISTRI_BACKEND": "gloo"})
    assert argv == LAUNCH + ["--nproc_per_node", "4", "--devices", "0,1,2,3", "--log_dir", "out/logs",
                             "--job_id", "dynabert", "--max_restart", "0"] + TAIL
    assert "PADDLE_DISTRI_BACKEND" not in env  # a stale gloo would silently train on CPU; Paddle picks nccl
    assert env["OMP_NUM_THREADS"] == "2"


def test_multi_node_second_node():
    argv, env = build(nproc_per_node=2, nnodes=2, master="10.0.0.1:8090", node_rank=1, device="cpu")
    assert argv == LAUNCH + ["--nproc_per_node", "2", "--nnodes", "2", "--rank", "1", "--master", "10.0.0.1:8090",
                             "--log_dir", "out/logs", "--job_id", "dynabert", "--max_restart", "0"] + TAIL
    assert "PADDLE_MASTER" not in env  # it would override --master
    opts = LaunchOptions(log_dir="l", nproc_per_node=2, nnodes=2, master="10.0.0.1:8090", node_rank=1)
    assert opts.global_rank(1) == 3


def test_single_process_uses_all_cores_and_still_goes_through_the_launcher():
    argv, env = build(cpu_count=2)
    assert argv == LAUNCH + ["--nproc_per_node", "1", "--log_dir", "out/logs", "--job_id", "dynabert",
                             "--max_restart", "0"] + TAIL
    assert env["OMP_NUM_THREADS"] == "2" and env["MKL_NUM_THREADS"] == "2"  # not the inherited 16
    assert "PADDLE_DISTRI_BACKEND" not in env  # auto: the launcher itself picks gloo on a CPU build


def test_explicit_omp_num_threads_wins_and_is_mirrored():
    _, env = build(nproc_per_node=2, base_env={"OMP_NUM_THREADS": "3"})
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"


def test_env_diff():
    _, env = build(nproc_per_node=2, device="cpu")
    diff = env_diff(BASE_ENV, env)
    assert "+ OMP_NUM_THREADS=1" in diff and "+ MKL_NUM_THREADS=1" in diff and "- PADDLE_TRAINER_ID" in diff


@pytest.mark.parametrize("kw, flag", [
    (dict(nproc_per_node=0), "--nproc_per_node"),
    (dict(nnodes=0), "--nnodes"),
    (dict(nnodes=2), "--master"),
    (dict(nnodes=2, master="10.0.0.1"), "--master"),
    (dict(nnodes=2, master="10.0.0.1:port"), "--master"),
    (dict(nnodes=2, master="10.0.0.1:70000"), "--master"),
    (dict(nnodes=2, master="node0:8090"), "--master"),
    (dict(nnodes=2, master="10.0.0.1:8090", node_rank=2), "--node_rank"),
    (dict(node_rank=-1), "--node_rank"),
    (dict(device="tpu"), "--device"),
    (dict(device="gpu", nproc_per_node=4, devices="0,1"), "--devices"),
    (dict(device="cpu", devices="0"), "--devices"),
    (dict(device="gpu", nproc_per_node=2, devices="0,0"), "--devices"),
    (dict(max_restarts=-1), "--max_restarts"),
])
def test_validation_names_the_flag(kw, flag):
    with pytest.raises(UserError) as e:
        LaunchOptions(log_dir="l", **kw)
    assert str(e.value).startswith(flag)


def test_visible_gpus_are_checked_against_cuda_visible_devices():
    with pytest.raises(UserError, match=r"^--devices 0,1: 0 is not in CUDA_VISIBLE_DEVICES=2,3"):
        build(nproc_per_node=2, devices="0,1", device="gpu", base_env={"CUDA_VISIBLE_DEVICES": "2,3"})
    with pytest.raises(UserError, match=r"^--nproc_per_node 4: only 2 GPU"):
        build(nproc_per_node=4, device="gpu", base_env={"CUDA_VISIBLE_DEVICES": "2,3"})
    argv, _ = build(nproc_per_node=2, devices="2,3", device="gpu", base_env={"CUDA_VISIBLE_DEVICES": "2,3"})
    assert argv[argv.index("--devices") + 1] == "2,3"


def test_worker_command_and_out_dir_override():
    args = build_parser().parse_args(["--config", "c.yaml", "--set", "run.out_dir=x", "--set", "a.b=1",
                                      "--out_dir", "runs/r1"])
    assert worker_command(args, "auto") == ["-m", "launcher.worker", "--config", "c.yaml", "--set", "run.out_dir=x",
                                            "--set", "a.b=1", "--set", "run.out_dir=runs/r1", "--resume", "auto"]
    args = build_parser().parse_args(["--config", "c.yaml", "--worker", "/t/fake.py"])
    assert worker_command(args, None) == ["/t/fake.py", "--config", "c.yaml"]


def test_pump_output_finds_the_failed_rank_and_hides_the_env_dump():
    launcher_output = io.StringIO(
        "rank 0 says hi\n"
        "LAUNCH ERROR 2026-01-01 00:00:00,000 Container failed !!!\n"
        "Container rank 1 status failed cmd ['python', '-m', 'w'] code 3 log out/logs/workerlog.1 \n"
        "env {'SECRET_TOKEN': 'xyz'}\n"
        "LAUNCH INFO 2026-01-01 00:00:00,000 Exit code -15\n")
    out, err = io.StringIO(), io.StringIO()
    assert pump_output(launcher_output, out, err) == (1, 3, "out/logs/workerlog.1")
    assert "SECRET_TOKEN" not in out.getvalue() + err.getvalue()
    assert out.getvalue().startswith("rank 0 says hi") and "Exit code" in err.getvalue()


def test_dry_run_prints_command_and_env(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    rc = main(["--config", str(cfg), "--nproc_per_node", "2", "--device", "cpu", "--out_dir", str(tmp_path / "o"),
               "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "+ PADDLE_DISTRI_BACKEND=gloo" in out and "thread(s) each" in out
    assert f"--log_dir {tmp_path / 'o' / 'logs'}" in out and "-m paddle.distributed.launch" in out


def test_user_error_is_one_line_exit_2(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --config {tmp_path / 'missing.yaml'}: file not found"


# --- the real thing: python -m paddle.distributed.launch with a fake worker -----------------------------

FAKE_WORKER = """\
import os, sys, time
rank = int(os.environ["PADDLE_TRAINER_ID"])
marker = {marker!r}
print(f"fake rank {{rank}} of {{os.environ['PADDLE_TRAINERS_NUM']}} argv {{sys.argv[1:]}}", flush=True)
if rank == 0:
    with open({record!r}, "a") as f:
        f.write(" ".join(sys.argv[1:]) + "\\n")
if {mode!r} == "always" or not os.path.exists(marker):
    if rank == 1:
        open(marker, "w").close()
        time.sleep(0.5)
        print("fake rank 1 fails now", flush=True)
        sys.exit({code})
    time.sleep(20)  # killed by the launcher when rank 1 fails
"""


def _fake_job(tmp_path, mode, code=3):
    """Rank 1 exits with ``code``: on every attempt ("always") or on the first one only."""
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER.format(marker=str(tmp_path / "failed-once"), record=str(tmp_path / "argv.txt"),
                                         mode=mode, code=code))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    out_dir = tmp_path / "run"
    return ["--config", str(cfg), "--worker", str(script), "--nproc_per_node", "2", "--device", "cpu",
            "--out_dir", str(out_dir)], out_dir / "logs"


@pytest.mark.dist
def test_failing_rank_is_named_with_its_log(tmp_path, capsys):
    argv, log_dir = _fake_job(tmp_path, "always")
    start = time.monotonic()
    rc = main(argv)
    elapsed = time.monotonic() - start
    captured = capsys.readouterr()
    last = captured.err.strip().splitlines()[-1]
    assert rc == 3, captured  # the failing rank's own code, not the launcher's 241 (= rank 0's SIGTERM)
    assert last == f"error: rank 1 failed with exit code 3 (see {log_dir / 'workerlog.1'})"
    assert "fake rank 0 of 2" in captured.out  # rank 0's output is forwarded
    assert "fake rank 1 fails now" in (log_dir / "workerlog.1").read_text()
    assert elapsed < 15  # rank 0 (sleeping 20 s) was killed, not waited for


@pytest.mark.dist
def test_restart_once_then_succeed_with_resume_auto(tmp_path, capsys):
    argv, log_dir = _fake_job(tmp_path, "first-attempt-only", code=1)  # a crash, which a restart may get past
    rc = main(argv + ["--max_restarts", "1", "--resume", "ckpt/step-10"])
    captured = capsys.readouterr()
    assert rc == 0, captured
    assert f"restart 1/1 after rank 1 failed (see {log_dir / 'workerlog.1'})" in captured.err
    attempts = (tmp_path / "argv.txt").read_text().splitlines()
    assert len(attempts) == 2
    assert attempts[0].endswith("--resume ckpt/step-10") and attempts[1].endswith("--resume auto")


@pytest.mark.dist
@pytest.mark.parametrize("code, meaning", [(2, "bad input"), (3, "training diverged")])
def test_bad_input_and_divergence_are_never_restarted(tmp_path, capsys, code, meaning):
    """Exit 2 (the same input fails again) and 3 (resuming from the same checkpoint diverges again) end the
    job at once, whatever --max_restarts says, and the one line says why."""
    argv, log_dir = _fake_job(tmp_path, "always", code=code)
    rc = main(argv + ["--max_restarts", "2"])
    captured = capsys.readouterr()
    assert rc == code, captured
    assert len((tmp_path / "argv.txt").read_text().splitlines()) == 1  # one attempt only
    assert "restart 1/2" not in captured.err
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith(f"error: rank 1 failed with exit code {code} ({meaning}; not restarted: "), last
    assert last.endswith(f"; see {log_dir / 'workerlog.1'})")


def test_a_worker_user_error_is_not_restarted(tmp_path, capsys, monkeypatch):
    import launcher.cli as cli

    calls = []

    def fake_run_job(argv, env, out, err):
        calls.append(argv)
        return cli.JobResult(241, failed_rank=1, failed_code=2, failed_log="l/workerlog.1")

    monkeypatch.setattr(cli, "run_job", fake_run_job)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    rc = main(["--config", str(cfg), "--nproc_per_node", "2", "--device", "cpu", "--max_restarts", "3"])
    assert rc == 2 and len(calls) == 1  # exit 2 is a UserError in the worker: a restart cannot fix the input
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == ("error: rank 1 failed with exit code 2 (bad input; not restarted: the next attempt would read"
                    " the same input; see l/workerlog.1)")


def test_overwrite_goes_to_the_first_attempt_only(tmp_path, capsys, monkeypatch):
    """A restart resumes (--resume auto) from the checkpoints the first attempt wrote: it must never pass
    --overwrite, which would delete them."""
    import launcher.cli as cli

    calls = []

    def fake_run_job(argv, env, out, err):
        calls.append(argv)
        return cli.JobResult(241, failed_rank=1, failed_code=-9, failed_log="l/workerlog.1")  # SIGKILLed

    monkeypatch.setattr(cli, "run_job", fake_run_job)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    rc = main(["--config", str(cfg), "--nproc_per_node", "2", "--device", "cpu", "--max_restarts", "2", "--overwrite"])
    assert rc == 137 and len(calls) == 3
    assert calls[0][-1] == "--overwrite" and "--resume" not in calls[0]
    for argv in calls[1:]:
        assert argv[-2:] == ["--resume", "auto"] and "--overwrite" not in argv


def test_overwrite_and_resume_together_are_refused_before_launching(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    assert main(["--config", str(cfg), "--overwrite", "--resume", "auto", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("error: --overwrite: not with --resume")


# --- multi-node: the node's IP, variables that override our flags, logs per node ------------------------

TWO_NODES = dict(nproc_per_node=2, nnodes=2, master="10.0.0.1:8090", node_rank=1, device="cpu")


def test_host_flag_becomes_the_launchers_host_and_wins_over_pod_ip():
    # Paddle lets POD_IP override --host (args_envs.py env_args_mapping), so the flag goes alone.
    argv, env = build(host="10.0.0.2", base_env={**BASE_ENV, "POD_IP": "10.9.9.9"}, **TWO_NODES)
    assert argv[argv.index("--host") + 1] == "10.0.0.2"
    assert "POD_IP" not in env


def test_a_user_set_pod_ip_is_passed_on_as_host():
    argv, env = build(base_env={**BASE_ENV, "POD_IP": "10.0.0.7"}, **TWO_NODES)
    assert argv[argv.index("--host") + 1] == "10.0.0.7" and "POD_IP" not in env
    argv, _ = build(base_env={**BASE_ENV, "POD_IP": "10.0.0.7"}, nproc_per_node=2, device="cpu")
    assert argv[argv.index("--host") + 1] == "10.0.0.7"  # one node too: its workers' endpoints use it


def test_without_host_or_pod_ip_a_multi_node_job_uses_the_route_to_the_master():
    argv, _ = build_launch_command(LaunchOptions(log_dir="l", **TWO_NODES), WORKER, python=PY, base_env=BASE_ENV,
                                   cpu_count=2, route_ip="10.0.0.5")
    assert argv[argv.index("--host") + 1] == "10.0.0.5"
    argv, _ = build_launch_command(LaunchOptions(log_dir="l", nproc_per_node=2), WORKER, python=PY,
                                   base_env=BASE_ENV, cpu_count=2, route_ip="10.0.0.5")
    assert "--host" not in argv  # one node: Paddle's own address is only used locally


def test_source_ip_towards_loopback_is_loopback():
    from launcher.cli import source_ip_towards

    assert source_ip_towards("127.0.0.1") == "127.0.0.1"


@pytest.mark.parametrize("kw, env, start", [
    (dict(host="node1"), {}, "--host node1:"),
    (dict(host="10.0.0.300"), {}, "--host 10.0.0.300:"),
    ({}, {"POD_IP": "node1.cluster"}, "POD_IP node1.cluster:"),
])
def test_a_host_that_is_not_an_ipv4_address_is_refused(kw, env, start):
    # Paddle only applies a --host containing a dot (plugins rewrite_host_ip) and compares IPs as strings.
    with pytest.raises(UserError) as e:
        build(base_env=env, **{**TWO_NODES, **kw})
    assert str(e.value).startswith(start)


@pytest.mark.parametrize("var", ["DISTRIBUTED_TRAINER_ENDPOINTS", "PADDLE_TRAINER_ENDPOINTS", "PADDLE_MASTER",
                                 "PADDLE_NNODES", "PADDLE_TRAINER_ID"])
def test_variables_that_override_master_or_nnodes_are_removed(var):
    # plugins/__init__.py collective_compatible: the *_TRAINER_ENDPOINTS variables replace --master/--nnodes.
    _, env = build(base_env={**BASE_ENV, var: "10.1.1.1:6170,10.1.1.2:6170"}, **TWO_NODES)
    assert var not in env


def test_the_master_bypasses_an_http_proxy():
    # The launcher talks to the master with httpx, which honours HTTP_PROXY (it only drops lower-case http_proxy).
    _, env = build(base_env={**BASE_ENV, "HTTP_PROXY": "http://proxy:3128", "NO_PROXY": "localhost"}, **TWO_NODES)
    assert env["NO_PROXY"] == "localhost,10.0.0.1" and env["no_proxy"] == "10.0.0.1"
    _, env = build(base_env=BASE_ENV, **TWO_NODES)
    assert "NO_PROXY" not in env and "no_proxy" not in env


def test_each_node_of_a_multi_node_job_logs_into_its_own_directory(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    out = tmp_path / "shared"
    for rank in (0, 1):
        assert main(["--config", str(cfg), "--out_dir", str(out), "--nnodes", "2", "--node_rank", str(rank),
                     "--master", "127.0.0.1:8090", "--nproc_per_node", "2", "--device", "cpu", "--dry-run"]) == 0
        assert f"--log_dir {out / 'logs' / f'node{rank}'} " in capsys.readouterr().out
    assert main(["--config", str(cfg), "--out_dir", str(out), "--device", "cpu", "--dry-run"]) == 0
    assert f"--log_dir {out / 'logs'} " in capsys.readouterr().out  # one node: unchanged


def test_failure_on_the_second_node_names_the_global_rank_and_that_nodes_log():
    from launcher.cli import JobResult

    opts = LaunchOptions(log_dir="out/logs/node1", **TWO_NODES)
    launcher_output = io.StringIO(
        "Container rank 1 status failed cmd ['python'] code 3 log out/logs/node1/workerlog.1 \nenv {}\n")
    failure = pump_output(launcher_output, io.StringIO(), io.StringIO())
    assert JobResult(241, *failure).explain(opts) == (
        "rank 3 (node 1, local rank 1) failed with exit code 3 (see out/logs/node1/workerlog.1)")


def test_a_collective_timeout_is_explained():
    from launcher.cli import JobResult

    opts = LaunchOptions(log_dir="out/logs/node0", **{**TWO_NODES, "node_rank": 0})
    text = JobResult(241, failed_rank=1, failed_code=4, failed_log="out/logs/node0/workerlog.1").explain(opts)
    assert text == ("rank 1 (node 0, local rank 1) stopped waiting in a collective (exit code 4): a rank on another"
                    " node has probably died (see out/logs/node0/workerlog.1)")


@pytest.mark.parametrize("value", ["abc", "-1", "inf", "nan"])
def test_a_bad_collective_timeout_is_refused_before_launching(value):
    with pytest.raises(UserError, match=r"^DYNABERT_COLLECTIVE_TIMEOUT="):
        build(base_env={**BASE_ENV, "DYNABERT_COLLECTIVE_TIMEOUT": value})


def test_collective_timeout_default_and_override():
    from launcher.launch_cmd import collective_timeout

    assert collective_timeout({}) == 1800.0
    assert collective_timeout({"DYNABERT_COLLECTIVE_TIMEOUT": "90"}) == 90.0
    assert collective_timeout({"DYNABERT_COLLECTIVE_TIMEOUT": "0"}) == 0.0


@pytest.mark.parametrize("value", ["abc", "-1", "inf", "nan"])
def test_a_bad_peer_timeout_is_refused_before_launching(value):
    with pytest.raises(UserError, match=r"^DYNABERT_PEER_TIMEOUT='.*': expected seconds >= 0 \(0 disables the time"):
        build(base_env={**BASE_ENV, "DYNABERT_PEER_TIMEOUT": value})


def test_peer_timeout_default_and_override():
    from launcher.launch_cmd import peer_timeout

    assert peer_timeout({}) == 90.0
    assert peer_timeout({"DYNABERT_PEER_TIMEOUT": "20"}) == 20.0
    assert peer_timeout({"DYNABERT_PEER_TIMEOUT": "0"}) == 0.0


def test_the_failing_ranks_own_error_line_is_quoted(tmp_path):
    """What node 0 prints when its rank ended because rank 1 (node 1) failed: the line from its log."""
    from launcher.cli import JobResult, last_error_line

    log = tmp_path / "workerlog.0"
    log.write_text("[rank 0] data: 1800 rows\nerror: not this one\nTraceback ...\n"
                   "error: rank 1 failed: model directory /nonexistent does not exist\nI1207 glog line\n")
    assert last_error_line(str(log)) == "rank 1 failed: model directory /nonexistent does not exist"
    assert last_error_line(str(tmp_path / "missing")) is None
    opts = LaunchOptions(log_dir=str(tmp_path), **{**TWO_NODES, "node_rank": 0})
    result = JobResult(241, failed_rank=0, failed_code=2, failed_log=str(log), failed_message=last_error_line(str(log)))
    assert result.explain(opts) == (f"rank 0 (node 0, local rank 0) failed with exit code 2 (see {log}): rank 1 failed:"
                                    " model directory /nonexistent does not exist")
    assert result.exit_status() == 2  # not restarted, like the failing rank on its own node


def test_a_lost_peer_is_explained():
    from launcher.cli import JobResult

    opts = LaunchOptions(log_dir="out/logs/node0", **{**TWO_NODES, "node_rank": 0})
    why = "rank 2 has given no sign of life for 110 s: it has probably died or hung"
    text = JobResult(241, failed_rank=1, failed_code=5, failed_log="out/logs/node0/workerlog.1",
                     failed_message=why).explain(opts)
    assert text == ("rank 1 (node 0, local rank 1) lost a peer rank (exit code 5; see out/logs/node0/workerlog.1): "
                    + why)


# --- device selection -------------------------------------------------------------------------------

@pytest.mark.parametrize("hidden", ["", " ", "-1"])
def test_auto_with_every_gpu_hidden_runs_on_cpu_with_gloo(hidden):
    # Left alone, Paddle's launcher would see the variable, assume GPUs and set FLAGS_selected_gpus=0
    # without gloo (context/device.py parse_device), or fail with an IndexError for 2 processes.
    argv, env = build(nproc_per_node=2, base_env={**BASE_ENV, "CUDA_VISIBLE_DEVICES": hidden})
    assert env["PADDLE_DISTRI_BACKEND"] == "gloo"
    assert "CUDA_VISIBLE_DEVICES" not in env and "FLAGS_selected_gpus" not in env
    assert "--devices" not in argv


def test_auto_with_visible_gpus_is_left_to_paddle():
    _, env = build(nproc_per_node=2, base_env={**BASE_ENV, "CUDA_VISIBLE_DEVICES": "0,1"})
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and "PADDLE_DISTRI_BACKEND" not in env


def test_gpu_with_every_gpu_hidden_is_refused():
    with pytest.raises(UserError, match=r"^--device gpu: CUDA_VISIBLE_DEVICES='' hides every GPU"):
        build(nproc_per_node=1, device="gpu", base_env={"CUDA_VISIBLE_DEVICES": ""})
