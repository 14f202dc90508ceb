"""GPU and multi-node paths that can be checked without a GPU: the GPU check and choice of GPUs, and the
watchdog that ends a rank stuck in a collective (docs/gpu-readiness.md). Hangs are injected, never timed."""
import os
import subprocess
import sys
import threading
import types

import pytest

import dynabert  # noqa: F401  (zlib before paddle)
from dynabert.errors import UserError
from launcher import cli, gpu_probe
from launcher.cli import main
from launcher.gpu_probe import GPU_PROBE_TAG, GpuProbe, parse_gpu_probe, usable_gpus
from launcher.launch_cmd import choose_gpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENEROUS_S = 60  # how long a test waits for something that must happen (it normally takes well under 1 s)


# --- is a GPU usable? --------------------------------------------------------------------------------

def test_probe_output_is_read_from_its_tagged_line():
    out = 'W1128 warning from paddle\n' + GPU_PROBE_TAG + \
        '{"cuda_build": true, "count": 2, "usable": true, "detail": "NVIDIA A100"}\n'
    assert parse_gpu_probe(0, out) == GpuProbe(True, 2, True, "NVIDIA A100")


def test_a_probe_that_died_is_a_one_line_error():
    with pytest.raises(UserError, match=r"exit code -11 and no result: Segmentation fault$"):
        parse_gpu_probe(-11, "loading libcuda\nSegmentation fault\n")


@pytest.mark.parametrize("probe, env, message", [
    (GpuProbe(False, 0, False), {}, r"^--device gpu: the installed Paddle is a CPU build"),
    (GpuProbe(True, 0, False, "cudaErrorInsufficientDriver"), {},
     r"^--device gpu: Paddle's CUDA build sees no GPU \(cudaErrorInsufficientDriver\): check the NVIDIA driver"),
    (GpuProbe(True, 0, False), {"CUDA_VISIBLE_DEVICES": "7"}, r"sees no GPU with CUDA_VISIBLE_DEVICES='7'"),
    (GpuProbe(True, 1, False, "ExternalError: CUDA error(999)"), {},
     r"^--device gpu: a test computation on GPU 0 failed \(ExternalError: CUDA error\(999\)\)"),
])
def test_an_unusable_gpu_stops_with_one_line(probe, env, message):
    with pytest.raises(UserError, match=message) as e:
        usable_gpus(probe, "--device gpu", env)
    assert "\n" not in str(e.value)


def test_usable_gpus_are_named_as_paddles_launcher_names_them():
    assert usable_gpus(GpuProbe(True, 4, True), "--device gpu", {}) == ["0", "1", "2", "3"]
    # With CUDA_VISIBLE_DEVICES the launcher's labels are its entries; CUDA stops at the first bad one.
    assert usable_gpus(GpuProbe(True, 2, True), "--device gpu", {"CUDA_VISIBLE_DEVICES": "4,6,9"}) == ["4", "6"]


@pytest.mark.dist  # imports paddle in a child process
def test_device_gpu_is_refused_on_this_cpu_build(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    for flags, flag in ((["--device", "gpu"], "--device gpu"), (["--devices", "0"], "--devices 0")):
        assert main(["--config", str(cfg), "--out_dir", str(tmp_path / "o"), *flags]) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: {flag}: the installed Paddle is a CPU build (paddle.is_compiled_with_cuda() is False);"
            " install paddlepaddle-gpu (make venv PADDLE=paddlepaddle-gpu)")
    assert not (tmp_path / "o" / "logs").exists()  # nothing was launched


def test_input_errors_come_before_the_gpu_check(tmp_path, monkeypatch, capsys):
    def no_probe(python, env):
        raise AssertionError("the GPU check ran")

    monkeypatch.setattr(gpu_probe, "run_gpu_probe", no_probe)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    assert main(["--config", str(cfg), "--device", "cpu", "--devices", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --devices 0: GPU ids, not valid with --device cpu"
    cfg.write_text("run: {no_such_key: 1}\n")
    assert main(["--config", str(cfg), "--device", "gpu"]) == 2
    assert "no_such_key" in capsys.readouterr().err


# --- which GPUs ----------------------------------------------------------------------------------------

def test_gpu_choice():
    usable = ["0", "1", "2", "3"]
    assert choose_gpus(devices=None, nproc=None, usable=usable, flag="--device gpu") == ("0,1,2,3", 4)
    assert choose_gpus(devices=None, nproc=2, usable=usable, flag="--device gpu") == ("0,1", 2)
    assert choose_gpus(devices="2,3", nproc=None, usable=usable, flag="--devices 2,3") == ("2,3", 2)
    with pytest.raises(UserError, match=r"^--devices 3,5: GPU 5 is not usable here \(usable: 0,1,2,3\)"):
        choose_gpus(devices="3,5", nproc=None, usable=usable, flag="--devices 3,5")
    with pytest.raises(UserError, match=r"^--nproc_per_node 8: only 4 usable GPU"):
        choose_gpus(devices=None, nproc=8, usable=usable, flag="--device gpu")


def _fake_gpu_node(monkeypatch, count):
    launched = []
    monkeypatch.setattr(gpu_probe, "run_gpu_probe", lambda python, env: GpuProbe(True, count, True, "fake GPU"))
    monkeypatch.setattr(cli, "run_job", lambda argv, env, out, err: launched.append((argv, env)) or cli.JobResult(0))
    return launched


def test_device_gpu_without_devices_starts_one_process_per_usable_gpu(tmp_path, monkeypatch, capsys):
    launched = _fake_gpu_node(monkeypatch, count=4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    assert main(["--config", str(cfg), "--out_dir", str(tmp_path / "o"), "--device", "gpu"]) == 0
    (argv, env), = launched
    assert argv[argv.index("--nproc_per_node") + 1] == "4" and argv[argv.index("--devices") + 1] == "0,1,2,3"
    assert "PADDLE_DISTRI_BACKEND" not in env  # NCCL, not gloo
    log_line = capsys.readouterr().err.splitlines()[0]
    assert log_line.startswith("dynabert-launch: 4 process(es) on gpu 0,1,2,3 (every usable GPU: no --devices")


def test_device_gpu_with_nproc_takes_the_first_visible_gpus(tmp_path, monkeypatch):
    launched = _fake_gpu_node(monkeypatch, count=3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,6,7")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    assert main(["--config", str(cfg), "--device", "gpu", "--nproc_per_node", "2"]) == 0
    argv = launched[0][0]
    assert argv[argv.index("--devices") + 1] == "5,6"


def test_dry_run_counts_gpus_from_cuda_visible_devices_or_asks(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert main(["--config", str(cfg), "--device", "gpu", "--dry-run"]) == 0
    assert "--nproc_per_node 2 --devices 2,3 " in capsys.readouterr().out
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert main(["--config", str(cfg), "--device", "gpu", "--dry-run"]) == 2
    assert "cannot count this node's GPUs" in capsys.readouterr().err


def test_auto_with_hidden_gpus_says_cpu_in_the_log_line(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert main(["--config", str(cfg), "--nproc_per_node", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "on cpu (gloo), CUDA_VISIBLE_DEVICES hides every GPU" in out and "- CUDA_VISIBLE_DEVICES" in out


# --- the collective watchdog ---------------------------------------------------------------------------

from launcher.fleet_setup import CollectiveWatchdog  # noqa: E402  (imports paddle.distributed)


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_watchdog_deadline_is_the_guarded_blocks_start_plus_the_timeout():
    clock = _Clock()
    wd = CollectiveWatchdog(30.0, rank=3, on_timeout=lambda m: None, clock=clock)
    assert wd.overdue(1e9) is None  # nothing guarded
    with wd.guard("barrier"):
        assert wd.overdue(129.9) is None
        assert wd.overdue(130.0) == ("error: rank 3: barrier has not returned after 30 s; a peer rank has probably"
                                     " died or hung (DYNABERT_COLLECTIVE_TIMEOUT sets the limit, 0 disables)")
    assert wd.overdue(1e9) is None  # returned in time: disarmed


def test_watchdog_zero_is_off():
    wd = CollectiveWatchdog(0, rank=0, on_timeout=lambda m: None)
    with wd.guard("barrier"):
        assert wd.overdue(float("inf")) is None


def _hang_in_thread(fn):
    """Run ``fn`` (which blocks until released) in a thread; the test releases it at the end."""
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def test_watchdog_fires_once_for_a_collective_that_never_returns():
    fired, messages, release = threading.Event(), [], threading.Event()

    def on_timeout(message):
        messages.append(message)
        fired.set()

    wd = CollectiveWatchdog(0.2, rank=1, on_timeout=on_timeout)

    def stuck():
        with wd.guard("all_reduce of the gradients"):
            release.wait()  # the injected hang: a peer that never answers

    t = _hang_in_thread(stuck)
    assert fired.wait(GENEROUS_S)
    release.set()
    t.join(GENEROUS_S)
    assert messages == [messages[0]] and messages[0].startswith(
        "error: rank 1: all_reduce of the gradients has not returned after 0.2 s")


def test_paddle_collectives_guard_every_collective(monkeypatch):
    import paddle

    import launcher.fleet_setup as fs

    release = threading.Event()
    calls = []

    def stuck_all_reduce(tensor):  # a fake dist: its all_reduce waits for a peer that never comes
        calls.append(tensor.shape)
        release.wait()

    fake_dist = types.SimpleNamespace(get_rank=lambda: 1, get_world_size=lambda: 2, all_reduce=stuck_all_reduce)
    monkeypatch.setattr(fs, "dist", fake_dist)
    monkeypatch.setattr(fs.gradient_sync, "dist", fake_dist)  # where the gradient reduction calls it
    fired, messages = threading.Event(), []
    wd = CollectiveWatchdog(0.2, rank=1, on_timeout=lambda m: (messages.append(m), fired.set()))
    comms = fs.PaddleCollectives(watchdog=wd)
    w = paddle.create_parameter([2, 2], "float32")
    (w * 2.0).sum().backward()
    t = _hang_in_thread(lambda: comms.all_reduce_gradients([w]))
    assert fired.wait(GENEROUS_S)
    release.set()
    t.join(GENEROUS_S)
    assert calls == [[4]] and messages[0].startswith("error: rank 1: all_reduce of the gradients has not returned")
    assert w.grad.numpy().tolist() == [[1.0, 1.0], [1.0, 1.0]]  # the collective's result is still used: 2 / 2


@pytest.mark.dist  # a child process
def test_a_stuck_rank_prints_one_line_and_exits_with_code_4():
    code = ("import threading, dynabert\n"
            "from launcher.fleet_setup import CollectiveWatchdog\n"
            "with CollectiveWatchdog(0.3, rank=5).guard('barrier'):\n"
            "    threading.Event().wait()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=GENEROUS_S,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert done.returncode == 4, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: rank 5: barrier has not returned after 0.3 s; a peer rank has probably died or hung"
        " (DYNABERT_COLLECTIVE_TIMEOUT sets the limit, 0 disables)")
