"""Checkpoints and exact resume: a run killed with SIGKILL and resumed ends where the uninterrupted run
ends; checkpoints are complete or ignored; config changes that shape the model are refused."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import psutil
import pytest

from dynabert.checkpoint import MANIFEST, Checkpointer, Position, latest_checkpoint, list_checkpoints, verify
from tests.conftest import ROOT

TINY = os.path.join(ROOT, "configs", "tiny.yaml")
STEPS = 48  # long enough that the kill after checkpoint 12 lands well before the end, even on a busy machine


def _env(threads="2"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_")}
    env.update(GLUE_DIR="", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONPATH=ROOT)
    return env


def _args(model_dir, teacher, out, *extra):
    return ["--config", TINY, "--set", f"model.name_or_path={model_dir}", "--set", f"model.teacher={teacher}",
            "--set", f"run.out_dir={out}", "--set", "run.stages=[compress]",
            "--set", f"compress.optim.max_steps={STEPS}", "--set", "compress.optim.eval_every=8",
            "--set", "run.checkpoint_every_steps=6", "--set", "model.dropout=0.1", *extra]


@pytest.fixture(scope="module")
def teacher(tiny_model_dir, tmp_path_factory):
    """A fine-tuned tiny teacher, made once."""
    out = str(tmp_path_factory.mktemp("teacher_run"))
    cmd = [sys.executable, "-m", "launcher.worker", "--config", TINY, "--set", f"model.name_or_path={tiny_model_dir}",
           "--set", f"run.out_dir={out}", "--set", "run.stages=[finetune]", "--set", "finetune.epochs=1"]
    subprocess.run(cmd, env=_env(), check=True, capture_output=True, timeout=300)
    return os.path.join(out, "teacher")


def _final(out):
    state = paddle.load(os.path.join(out, "compress", "supernet.pdparams"))
    best = json.load(open(os.path.join(out, "checkpoints", "compress", "DONE.json")))["best"]
    return {k: v.numpy() for k, v in state.items()}, best


def _wait_for_checkpoint(out, proc, at_least):
    root = os.path.join(out, "checkpoints", "compress")
    deadline = time.time() + 240
    while time.time() < deadline:
        done = [p for p in list_checkpoints(root) if verify(p) is None]
        if done and int(os.path.basename(done[-1])[5:]) >= at_least:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before checkpoint step {at_least}")
        time.sleep(0.2)
    pytest.fail("no checkpoint appeared")


def _assert_same(a, b):
    params_a, best_a = a
    params_b, best_b = b
    assert best_a == best_b  # same per-width metrics, at the same steps
    for name in params_a:
        np.testing.assert_allclose(params_b[name], params_a[name], rtol=0, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, teacher, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("straight"))
    subprocess.run([sys.executable, "-m", "launcher.worker", *_args(tiny_model_dir, teacher, out)],
                   env=_env(), check=True, capture_output=True, timeout=300)
    return _final(out)


def test_sigkill_then_resume_auto_matches_uninterrupted_run(tiny_model_dir, teacher, uninterrupted, tmp_path):
    out = str(tmp_path / "killed")
    args = _args(tiny_model_dir, teacher, out)
    proc = subprocess.Popen([sys.executable, "-m", "launcher.worker", *args], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(out, proc, at_least=12)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(out, "checkpoints", "compress", "DONE.json"))
    done = subprocess.run([sys.executable, "-m", "launcher.worker", *args, "--resume", "auto"], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compress: resuming from" in done.stdout
    _assert_same(uninterrupted, _final(out))


def test_two_processes_killed_worker_restarts_and_matches(tiny_model_dir, teacher, tmp_path):
    """dynabert-launch --max_restarts 1: SIGKILL rank 1 after a checkpoint; the job restarts with
    --resume auto, completes, and ends with the parameters of an uninterrupted 2-process run."""
    def launch(out, *extra):
        cli = [sys.executable, "-m", "launcher", "--nproc_per_node", "2", "--device", "cpu",
               *_args(tiny_model_dir, teacher, out), *extra]
        return subprocess.Popen(cli, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    straight = str(tmp_path / "straight2")
    proc = launch(straight)
    assert proc.wait(timeout=300) == 0, proc.stdout.read()[-3000:]

    out = str(tmp_path / "restarted")
    proc = launch(out, "--max_restarts", "1")
    _wait_for_checkpoint(out, proc, at_least=12)
    def rank1_workers():
        found = []
        for p in psutil.Process(proc.pid).children(recursive=True):
            try:
                if "launcher.worker" in " ".join(p.cmdline()) and p.environ().get("PADDLE_TRAINER_ID") == "1":
                    found.append(p)
            except psutil.Error:  # a process that ended while we looked
                pass
        return found

    victims = rank1_workers()
    assert len(victims) == 1, "rank 1's worker was not running after checkpoint 12"
    victims[0].send_signal(signal.SIGKILL)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    assert "restart 1/1 after rank 1 failed" in output
    _assert_same(_final(straight), _final(out))


def test_resume_refuses_a_changed_model_shape(tiny_model_dir, teacher, tmp_path):
    out = str(tmp_path / "run")
    args = _args(tiny_model_dir, teacher, out, "--set", "compress.optim.max_steps=7")
    subprocess.run([sys.executable, "-m", "launcher.worker", *args], env=_env(), check=True,
                   capture_output=True, timeout=300)
    os.remove(os.path.join(out, "checkpoints", "compress", "DONE.json"))  # as if it died after step 6
    changed = subprocess.run([sys.executable, "-m", "launcher.worker", *args, "--set", "compress.widths=[1.0,0.5]",
                              "--resume", "auto"], env=_env(), capture_output=True, text=True, timeout=300)
    assert changed.returncode == 2
    error = [line for line in changed.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "compress.widths: [1.0, 0.75, 0.5, 0.25] -> [1.0, 0.5]" in error[0]
    harmless = subprocess.run([sys.executable, "-m", "launcher.worker", *args, "--set", "run.log_every=3",
                               "--resume", "auto"], env=_env(), capture_output=True, text=True, timeout=300)
    assert harmless.returncode == 0, harmless.stderr[-2000:]
    assert "resuming from" in harmless.stdout and "step_00000006" in harmless.stdout


def _save(ck, step):
    return ck.save(Position(step, 0, step), {"w": np.full(3, step, np.float32)}, {"m": np.zeros(2)}, {"best": step})


def test_partial_or_corrupt_checkpoints_are_skipped(tmp_path):
    ck = Checkpointer(str(tmp_path), every_steps=1, every_minutes=0, keep=5, is_main=True, fingerprint={})
    for step in (1, 2, 3):
        _save(ck, step)
    paths = list_checkpoints(str(tmp_path))
    os.remove(os.path.join(paths[2], MANIFEST))                       # step 3: died before the manifest
    with open(os.path.join(paths[1], "model.pdparams"), "r+b") as f:  # step 2: a flipped byte
        f.seek(10)
        byte = f.read(1)
        f.seek(10)
        f.write(bytes([byte[0] ^ 0xFF]))
    seen = []
    found = latest_checkpoint(str(tmp_path), seen.append)
    assert found.position.step == 1 and found.extra == {"best": 1}
    assert "no manifest" in seen[0] and "does not match its checksum" in seen[1]


def test_keeps_the_last_k_and_never_lists_temporary_dirs(tmp_path):
    ck = Checkpointer(str(tmp_path), every_steps=1, every_minutes=0, keep=2, is_main=True, fingerprint={})
    for step in range(1, 6):
        _save(ck, step)
    os.makedirs(tmp_path / ".step_00000009.tmp-abc")
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))] == ["step_00000004", "step_00000005"]


def test_only_the_main_rank_writes(tmp_path):
    ck = Checkpointer(str(tmp_path), every_steps=1, every_minutes=0, keep=2, is_main=False, fingerprint={})
    assert _save(ck, 1) is None and not os.listdir(tmp_path)


def test_explicit_resume_path_loads_that_checkpoint(tmp_path):
    from dynabert.collectives import SingleProcess
    from dynabert.config import model_fingerprint
    from dynabert.errors import UserError
    from dynabert.run_log import RunLog
    from dynabert.stage_state import resume_point
    from launcher.config import load_config

    cfg = load_config(TINY, [f"run.out_dir={tmp_path}"])
    root = tmp_path / "checkpoints" / "compress"
    ck = Checkpointer(str(root), every_steps=1, every_minutes=0, keep=5, is_main=True,
                      fingerprint={**model_fingerprint(cfg), "stage": "compress"})
    older, newer = _save(ck, 3), _save(ck, 4)
    log = RunLog("", enabled=False)
    assert resume_point(cfg, "compress", older, SingleProcess(), log).position.step == 3  # not only the newest
    assert resume_point(cfg, "compress", newer, SingleProcess(), log).extra == {"best": 4}
    os.remove(os.path.join(older, MANIFEST))
    with pytest.raises(UserError, match="not a complete checkpoint"):
        resume_point(cfg, "compress", older, SingleProcess(), log)
