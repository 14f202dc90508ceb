"""Bad input to the worker ends with exit code 2 and one ``error:`` line naming the key or file.

These run the real entry point, ``launcher.worker.main([...])``, in this process: the message and the
exit code are the behaviour under test, and starting a fresh interpreter for each would cost seconds.
(tests/test_pipeline.py runs the worker as a process for the runs that train.) The ``run_worker`` fixture
is in conftest.py.
"""
import os
import shutil

import pytest

from tests.conftest import ROOT

TINY = os.path.join(ROOT, "configs", "tiny.yaml")


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_export_without_compress(run_worker, tiny_model_dir, tmp_path):
    code, err = run_worker("--config", TINY, "--set", f"model.name_or_path={tiny_model_dir}",
                           "--set", f"run.out_dir={tmp_path}", "--set", "run.stages=[export]")
    assert code == 2
    errors = error_lines(err)
    assert len(errors) == 1 and errors[0].startswith("error: export.widths: no kept model for width 1"), err


@pytest.mark.parametrize("args, needle", [
    (["--set", "compress.widths=[1.0,0.3]"], "compress.widths: width 0.3 x 4 attention heads"),
    (["--set", "data.task=nope"], "nope"),
    (["--set", "data.glue_dir=/no/such/dir"], "/no/such/dir"),
    (["--set", "compress.optim.batch_size=5000"], "compress.optim.batch_size: the training set has"),
    (["--set", "compress.foo=1"], "compress.foo: unknown key"),
])
def test_bad_input_exits_2_with_one_line(run_worker, tiny_model_dir, tmp_path, args, needle):
    code, err = run_worker("--config", TINY, "--set", f"model.name_or_path={tiny_model_dir}",
                           "--set", f"run.out_dir={tmp_path / 'out'}", *args)
    assert code == 2, err
    errors = error_lines(err)
    assert len(errors) == 1 and needle in errors[0], err


def test_model_dir_without_vocab(run_worker, tmp_path):
    (tmp_path / "m").mkdir()
    code, err = run_worker("--config", TINY, "--set", f"model.name_or_path={tmp_path / 'm'}",
                           "--set", f"run.out_dir={tmp_path / 'out'}")
    errors = error_lines(err)
    assert code == 2 and len(errors) == 1 and "has no vocab.txt" in errors[0], err


def test_unwritable_out_dir_is_refused_before_anything_runs(run_worker, tiny_model_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    code, err = run_worker("--config", TINY, "--set", f"model.name_or_path={tiny_model_dir}",
                           "--set", f"run.out_dir={blocker}/run")
    assert code == 2
    errors = error_lines(err)
    assert len(errors) == 1 and errors[0].startswith(f"error: run.out_dir: cannot write to {blocker}/run"), err
    assert blocker.read_text() == "not a directory"


def test_vocabulary_larger_than_the_embedding_is_refused(run_worker, tiny_model_dir, tmp_path):
    bad = tmp_path / "model"
    shutil.copytree(tiny_model_dir, bad)
    with open(bad / "vocab.txt", "a") as f:
        f.write("".join(f"extra{i}\n" for i in range(50)))
    code, err = run_worker("--config", TINY, "--set", f"model.name_or_path={bad}",
                           "--set", f"run.out_dir={tmp_path / 'o'}")
    errors = error_lines(err)
    assert code == 2 and len(errors) == 1
    assert "vocab.txt has" in errors[0] and "the vocabulary does not belong to this model" in errors[0], err
