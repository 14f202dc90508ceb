"""Checkpoints: complete or ignored, written while the ranks train on, kept within the disk; config changes
that shape the model are refused. That a run killed anywhere and resumed ends where the uninterrupted run
ends is tests/test_crash_matrix.py's."""
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from dynabert.errors import UserError
from dynabert.train.checkpoint import MANIFEST, Checkpointer, Position, latest_checkpoint, list_checkpoints, verify
from tests.conftest import ROOT, job_report

TINY = os.path.join(ROOT, "configs", "tiny.yaml")
STEPS = 24


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


def _assert_same(a, b):
    params_a, best_a = a
    params_b, best_b = b
    assert best_a == best_b  # same per-width metrics, at the same steps
    for name in params_a:
        np.testing.assert_allclose(params_b[name], params_a[name], rtol=0, atol=1e-6, err_msg=name)


def _launch_two(model_dir, teacher, out, *extra, env=None):
    cli = [sys.executable, "-m", "launcher", "--nproc_per_node", "2", "--device", "cpu",
           *_args(model_dir, teacher, out), *extra]
    return subprocess.run(cli, env={**_env(), **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def uninterrupted_two(tiny_model_dir, teacher, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("straight2"))
    straight = _launch_two(tiny_model_dir, teacher, out)
    assert straight.returncode == 0, job_report(straight.stdout, os.path.join(out, "logs"))
    return _final(out)


@pytest.mark.dist
def test_checkpoint_written_longer_than_a_collective_timeout_while_ranks_train_on(
        tiny_model_dir, teacher, uninterrupted_two, tmp_path):
    """Checkpoint 6 is still being written when the loop completes step 12 (the ranks trained on
    meanwhile: that is the event it waits for), then takes 35 s more, so at checkpoint 12 rank 0 waits
    for it and rank 1 waits for rank 0 longer than gloo's 30 s collective timeout: on the store, not in
    a collective. The job ends as an uninterrupted one; the slow checkpoint is complete and verifiable."""
    out = str(tmp_path / "slow")
    slow = _launch_two(tiny_model_dir, teacher, out, "--set", "run.keep_checkpoints=5",
                       env={"DYNABERT_SLOW_CHECKPOINT": "step=6,until=12,seconds=35"})
    assert slow.returncode == 0, job_report(slow.stdout, os.path.join(out, "logs"))
    assert slow.stdout.count("[fault injection] checkpoint of step 6 held open until step 12, then 35 s") == 1, \
        slow.stdout[-3000:]
    root = os.path.join(out, "checkpoints", "compress")
    assert [os.path.basename(p) for p in list_checkpoints(root)] == ["step_00000006", "step_00000012",
                                                                     "step_00000018"]
    assert all(verify(p) is None for p in list_checkpoints(root))
    _assert_same(uninterrupted_two, _final(out))


@pytest.mark.dist
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
    path = ck.save(Position(step, 0, step), lambda: {"w": np.full(3, step, np.float32)}, lambda: {"m": np.zeros(2)},
                   {"best": step})
    ck.wait()  # written by a background thread
    return path


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


def test_a_slow_write_stays_incomplete_until_training_passes_the_chosen_step(tmp_path, monkeypatch):
    """The test-only slow write is held by an event (the loop's progress), not a duration, and a
    checkpoint caught mid-write has no manifest, so it is not a checkpoint."""
    from dynabert.collectives import SingleProcess

    monkeypatch.setenv("DYNABERT_SLOW_CHECKPOINT", "step=2,until=4,seconds=0")
    ck = Checkpointer(str(tmp_path), every_steps=2, every_minutes=0, keep=5, is_main=True, fingerprint={})
    comms = SingleProcess()
    assert ck.due(2, comms)
    path = ck.save(Position(2, 0, 2), lambda: {"w": np.zeros(3, np.float32)}, lambda: {}, {})
    ck.due(3, comms)
    assert not ck._writer.join(timeout=0.5) and ck._writer.is_alive()  # still held: step 4 not reached
    assert verify(path) is not None and latest_checkpoint(str(tmp_path), lambda _: None) is None
    ck.due(4, comms)
    ck.wait()
    assert verify(path) is None
    for bad in ("step=2", "step=2,seconds=x,until=3", "step=2,seconds=1,until=3,extra=1"):
        monkeypatch.setenv("DYNABERT_SLOW_CHECKPOINT", bad)
        with pytest.raises(UserError, match="DYNABERT_SLOW_CHECKPOINT"):
            Checkpointer(str(tmp_path), every_steps=2, every_minutes=0, keep=5, is_main=True, fingerprint={})


def test_keeps_the_last_k_and_never_lists_temporary_dirs(tmp_path):
    ck = Checkpointer(str(tmp_path), every_steps=1, every_minutes=0, keep=2, is_main=True, fingerprint={})
    for step in range(1, 6):
        _save(ck, step)
    os.makedirs(tmp_path / ".step_00000009.tmp-abc")
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))] == ["step_00000004", "step_00000005"]


def test_a_checkpoint_that_would_not_fit_is_skipped_and_the_last_good_ones_stay(tmp_path, monkeypatch):
    import collections

    from dynabert.train import checkpoint

    lines = []
    ck = Checkpointer(str(tmp_path), every_steps=1, every_minutes=0, keep=2, is_main=True, fingerprint={},
                      log=lines.append)
    _save(ck, 1)
    _save(ck, 2)
    ck.wait()
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 10))  # 10 bytes free
    assert _save(ck, 3) is None
    ck.wait()
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))] == ["step_00000001", "step_00000002"]
    assert all(verify(p) is None for p in list_checkpoints(str(tmp_path)))
    assert len(lines) == 1 and lines[0].startswith("warning: checkpoint at step 3 skipped: it needs")


def test_leftovers_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    from dynabert.io_utils import atomic_write_text, remove_leftovers

    keep = ["checkpoints/compress/step_00000006/model.pdparams", "teacher/config.json", "results.json",
            "cache/.sst-2.train.tmp-x/rows.bin", "tmp-notes.txt", ".hidden"]
    gone = ["checkpoints/compress/.step_00000012.tmp-k2j3/model.pdparams", ".teacher.old-abc/teacher/x",
            "export/.width_0.5.tmp-9/inference/model.pdmodel", ".results.json.tmp-8f7d", "compress/best/"
            ".supernet.pdparams.tmp-4242"]
    for path in keep + gone:
        os.makedirs(os.path.dirname(tmp_path / path), exist_ok=True)
        (tmp_path / path).write_text("x")
    atomic_write_text(str(tmp_path / "config.yaml"), "a: 1\n")  # its temporary file is gone once written
    removed = remove_leftovers(str(tmp_path), skip=[str(tmp_path / "cache")])
    assert [os.path.relpath(p, tmp_path) for p in removed] == sorted([
        ".results.json.tmp-8f7d", ".teacher.old-abc", "checkpoints/compress/.step_00000012.tmp-k2j3",
        "compress/best/.supernet.pdparams.tmp-4242", "export/.width_0.5.tmp-9"])
    for path in keep + ["config.yaml"]:
        assert (tmp_path / path).exists(), path
    for path in gone:
        assert not (tmp_path / path).exists(), path


def test_only_the_main_rank_writes(tmp_path):
    ck = Checkpointer(str(tmp_path), every_steps=1, every_minutes=0, keep=2, is_main=False, fingerprint={})
    assert _save(ck, 1) is None and not os.listdir(tmp_path)


def test_explicit_resume_path_loads_that_checkpoint(tmp_path):
    from dynabert.collectives import SingleProcess
    from dynabert.config import model_fingerprint
    from dynabert.train.run_log import RunLog
    from dynabert.train.stage_state import resume_point
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
