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


@pytest.mark.dist
def test_full_run_writes_every_artifact(full_run):
    out, done = full_run
    for name in ("config.yaml", "metrics.jsonl", "results.json", "results.md", "teacher/model_state.pdparams",
                 "compress/supernet.pdparams"):
        assert os.path.exists(os.path.join(out, name)), name
    for stage in ("finetune", "compress"):  # a TensorBoard run per stage
        assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(out, "tensorboard", stage)))
    for w in ("1", "0.75", "0.5", "0.25"):
        export = os.path.join(out, "export", f"width_{w}")
        assert os.path.exists(os.path.join(export, "inference", "model.pdmodel")), w
        assert os.path.exists(os.path.join(export, "vocab.txt")), w
    assert not [p for p in os.listdir(os.path.join(out, "export")) if "tmp" in p]  # nothing half-written


@pytest.mark.dist
def test_results_table_per_width(full_run):
    out, done = full_run
    results = json.load(open(os.path.join(out, "results.json")))
    widths = [r["width"] for r in results["widths"]]
    params = [r["parameters"] for r in results["widths"]]
    assert widths == [1.0, 0.75, 0.5, 0.25]
    assert params == sorted(params, reverse=True) and len(set(params)) == 4
    assert "accuracy" in results["teacher"]
    table = open(os.path.join(out, "results.md")).read()
    assert table.count("\n") == 8 and "| 0.5 |" in table  # protocol line, blank, header, rule, 4 widths
    assert table.startswith("Protocol: importance and checkpoint selection on 200 held-out training rows")
    assert results["protocol"]["select"] == "supernet" and results["protocol"]["select_on"] == "validation"
    # printed at the end
    assert "| width | parameters | encoder parameters | dev accuracy | teacher accuracy |" in done.stdout
    assert "built-in synthetic sentiment data (NOT GLUE" in done.stdout  # says which data it used


@pytest.mark.dist
def test_metrics_log_has_losses_lr_and_per_width_eval(full_run):
    out, _ = full_run
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    kinds = {r["kind"] for r in rows}
    assert {"finetune", "finetune_eval", "compress", "compress_eval/w0.5", "compress_eval/w0.25"} <= kinds
    train = [r for r in rows if r["kind"] == "compress"]
    assert all({"w1.0/rep", "w0.25/logit", "w0.5/loss", "lr"} <= set(r) for r in train)


@pytest.mark.dist
def test_teacher_learns_the_builtin_task(full_run):
    out, _ = full_run
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["teacher"]["accuracy"] >= 0.75  # chance is ~0.5


@pytest.mark.dist
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


def test_stage_names_are_the_documented_ones():
    assert STAGES == ("finetune", "compress", "compress_depth", "refine", "export", "select")


def test_too_little_disk_for_a_checkpoint_is_refused(monkeypatch, tmp_path):
    import collections
    import shutil as sh

    from dynabert.collectives import SingleProcess
    from dynabert.errors import UserError
    from dynabert.model.pretrained import tiny_bert
    from dynabert.train import preflight
    from launcher.config import load_config

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(sh, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    cfg = load_config(TINY, [f"run.out_dir={tmp_path}", "run.checkpoint_every_steps=10"])
    with pytest.raises(UserError, match=r"run.out_dir: .* has 0 MiB free, one checkpoint needs about"):
        preflight.check_free_space(cfg, tiny_bert(), SingleProcess())
    off = load_config(TINY, [f"run.out_dir={tmp_path}", "run.checkpoint_every_steps=0",
                             "run.checkpoint_every_minutes=0"])
    preflight.check_free_space(off, tiny_bert(), SingleProcess())  # no checkpoints, no disk needed


def test_a_max_seq_len_beyond_the_position_table_is_refused_before_anything_trains(tiny_model_dir, tmp_path,
                                                                                     capsys):
    from launcher import worker

    out = tmp_path / "run"
    code = worker.main(["--config", TINY, "--set", f"model.name_or_path={tiny_model_dir}", "--set",
                        f"run.out_dir={out}", "--set", "data.max_seq_len=65"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: data.max_seq_len: 65 exceeds the model's max_position_embeddings (64, "
                   f"{tiny_model_dir}/config.json); set it to at most 64"]
    assert not (out / "teacher").exists() and not (out / "cache").exists()
