"""The whole pipeline on a tiny random BERT and the built-in data: every stage, alone and together,
through the real worker entry point, in seconds on CPU."""
import json
import os
import subprocess
import sys

import pytest

from dynabert.config import STAGES
from tests.conftest import ROOT

TINY = os.path.join(ROOT, "configs", "tiny.yaml")


def worker(*args, cwd=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_")}
    env.update(GLUE_DIR="", OMP_NUM_THREADS="2", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "launcher.worker", *args], env=env, cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    done = worker("--config", TINY, "--set", f"model.name_or_path={tiny_model_dir}", "--set", f"run.out_dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_full_run_writes_every_artifact(full_run):
    out, done = full_run
    for name in ("config.yaml", "metrics.jsonl", "results.json", "results.md", "teacher/model_state.pdparams",
                 "compress/supernet.pdparams"):
        assert os.path.exists(os.path.join(out, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(out, "tensorboard")))
    for w in ("1", "0.75", "0.5", "0.25"):
        export = os.path.join(out, "export", f"width_{w}")
        assert os.path.exists(os.path.join(export, "inference", "model.pdmodel")), w
        assert os.path.exists(os.path.join(export, "vocab.txt")), w
    assert not [p for p in os.listdir(os.path.join(out, "export")) if "tmp" in p]  # nothing half-written


def test_results_table_per_width(full_run):
    out, done = full_run
    results = json.load(open(os.path.join(out, "results.json")))
    widths = [r["width"] for r in results["widths"]]
    params = [r["parameters"] for r in results["widths"]]
    assert widths == [1.0, 0.75, 0.5, 0.25]
    assert params == sorted(params, reverse=True) and len(set(params)) == 4
    assert "accuracy" in results["teacher"]
    table = open(os.path.join(out, "results.md")).read()
    assert table.count("\n") == 6 and "| 0.5 |" in table
    assert "| width | parameters | encoder parameters | dev accuracy | teacher accuracy |" in done.stdout  # printed at the end
    assert "built-in synthetic sentiment data (NOT GLUE" in done.stdout  # says which data it used


def test_metrics_log_has_losses_lr_and_per_width_eval(full_run):
    out, _ = full_run
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    kinds = {r["kind"] for r in rows}
    assert {"finetune", "finetune_eval", "compress", "compress_eval/w0.5", "compress_eval/w0.25"} <= kinds
    train = [r for r in rows if r["kind"] == "compress"]
    assert all({"w1.0/rep", "w0.25/logit", "w0.5/loss", "lr"} <= set(r) for r in train)


def test_teacher_learns_the_builtin_task(full_run):
    out, _ = full_run
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["teacher"]["accuracy"] >= 0.75  # chance is ~0.5


def test_stages_run_alone(full_run, tiny_model_dir, tmp_path):
    """compress and export reuse the first run's teacher directory via model.teacher."""
    out, _ = full_run
    teacher = os.path.join(out, "teacher")
    alone = str(tmp_path / "alone")
    done = worker("--config", TINY, "--set", f"model.name_or_path={tiny_model_dir}",
                  "--set", f"model.teacher={teacher}", "--set", f"run.out_dir={alone}",
                  "--set", "run.stages=[compress]", "--set", "compress.widths=[1.0,0.5]",
                  "--set", "compress.optim.max_steps=4")
    assert done.returncode == 0, done.stderr[-3000:]
    assert os.path.isdir(os.path.join(alone, "compress", "best", "width_0.5"))
    assert not os.path.exists(os.path.join(alone, "export"))
    done = worker("--config", TINY, "--set", f"model.teacher={teacher}", "--set", f"run.out_dir={alone}",
                  "--set", "run.stages=[export]", "--set", "compress.widths=[1.0,0.5]")
    assert done.returncode == 0, done.stderr[-3000:]
    assert os.path.isdir(os.path.join(alone, "export", "width_0.5", "inference"))


def test_export_without_compress_is_a_one_line_error(tiny_model_dir, tmp_path):
    done = worker("--config", TINY, "--set", f"model.name_or_path={tiny_model_dir}",
                  "--set", f"run.out_dir={tmp_path}", "--set", "run.stages=[export]")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: export.widths: no compressed model for width 1")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("args, needle", [
    (["--set", "compress.widths=[1.0,0.3]"], "compress.widths: width 0.3 x 4 attention heads"),
    (["--set", "data.task=nope"], "nope"),
    (["--set", "data.glue_dir=/no/such/dir"], "/no/such/dir"),
    (["--set", "compress.optim.batch_size=5000"], "compress.optim.batch_size: the training set has 2000"),
    (["--set", "compress.foo=1"], "compress.foo: unknown key"),
])
def test_bad_input_exits_2_with_one_line(tiny_model_dir, tmp_path, args, needle):
    done = worker("--config", TINY, "--set", f"model.name_or_path={tiny_model_dir}",
                  "--set", f"run.out_dir={tmp_path / 'out'}", *args)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_model_dir_without_vocab(tmp_path):
    (tmp_path / "m").mkdir()
    done = worker("--config", TINY, "--set", f"model.name_or_path={tmp_path / 'm'}")
    assert done.returncode == 2 and "has no vocab.txt" in done.stderr


def test_stage_names_are_the_documented_ones():
    assert STAGES == ("finetune", "compress", "export")


def test_unwritable_out_dir_is_refused_before_anything_runs(tiny_model_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    done = worker("--config", TINY, "--set", f"model.name_or_path={tiny_model_dir}",
                  "--set", f"run.out_dir={blocker}/run")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: run.out_dir: cannot write to {blocker}/run")
    assert blocker.read_text() == "not a directory"


def test_vocabulary_larger_than_the_embedding_is_refused(tiny_model_dir, tmp_path):
    import shutil as sh

    bad = tmp_path / "model"
    sh.copytree(tiny_model_dir, bad)
    with open(bad / "vocab.txt", "a") as f:
        f.write("".join(f"extra{i}\n" for i in range(50)))
    done = worker("--config", TINY, "--set", f"model.name_or_path={bad}", "--set", f"run.out_dir={tmp_path / 'o'}")
    assert done.returncode == 2
    assert "vocab.txt has" in done.stderr and "the vocabulary does not belong to this model" in done.stderr


def test_too_little_disk_for_a_checkpoint_is_refused(monkeypatch, tmp_path):
    import collections
    import shutil as sh

    from dynabert import pipeline
    from dynabert.collectives import SingleProcess
    from dynabert.errors import UserError
    from dynabert.models import tiny_bert
    from launcher.config import load_config

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(sh, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    cfg = load_config(TINY, [f"run.out_dir={tmp_path}", "run.checkpoint_every_steps=10"])
    with pytest.raises(UserError, match=r"run.out_dir: .* has 0 MiB free, one checkpoint needs about"):
        pipeline.check_free_space(cfg, tiny_bert(), SingleProcess())
    off = load_config(TINY, [f"run.out_dir={tmp_path}", "run.checkpoint_every_steps=0",
                             "run.checkpoint_every_minutes=0"])
    pipeline.check_free_space(off, tiny_bert(), SingleProcess())  # no checkpoints, no disk needed
