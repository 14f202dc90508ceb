"""The command-line tools: conversion gives the same model the pipeline loads; inspection validates data.

The tools' ``main([...])`` runs in this process; only the real-SST-2 inspection (every training row
tokenised) runs as a command, in the slow tier."""
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from dynabert.model.pretrained import default_model_dir, load_model
from tests.conftest import ROOT
from tools import convert_checkpoint, inspect_data


def test_convert_checkpoint_round_trip(tmp_path, capsys):
    out = tmp_path / "paddle_minilm"
    assert convert_checkpoint.main(["minilm", str(out)]) == 0, capsys.readouterr().err[-2000:]
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert (out / "model_state.pdparams").exists() and (out / "vocab.txt").exists()
    ids = paddle.to_tensor([[101, 1996, 3185, 2001, 2204, 102]])
    mask = paddle.ones([1, 6])
    direct = load_model(default_model_dir(), 2).bert(ids, attention_mask=mask)[0].numpy()
    converted = load_model(str(out), 2).bert(ids, attention_mask=mask)[0].numpy()
    np.testing.assert_allclose(converted, direct, atol=1e-6)
    assert not os.path.exists(os.path.join(default_model_dir(), "model_state.pdparams"))  # source untouched


def test_convert_checkpoint_bad_source_is_one_line(tmp_path, capsys):
    code = convert_checkpoint.main([str(tmp_path / "missing"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and str(tmp_path / "missing") in errors[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.dist
def test_inspect_data_reports_real_sst2(glue_dir):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "tools.inspect_data", "--task", "sst-2", "--glue_dir", glue_dir,
                           "--max_seq_len", "64"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "train.tsv (67349 rows)" in done.stdout and "dev.tsv (872 rows)" in done.stdout
    assert "labels: 0 428, 1 444" in done.stdout  # dev: 428 negative, 444 positive (SOURCES.md)


def test_inspect_data_names_the_bad_line(tmp_path, capsys):
    task = tmp_path / "SST-2"
    task.mkdir()
    (task / "train.tsv").write_text("sentence\tlabel\ngood film \t1\nbad row without label\n")
    (task / "dev.tsv").write_text("sentence\tlabel\nfine \t0\n")
    code = inspect_data.main(["--glue_dir", str(tmp_path)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and f"{task / 'train.tsv'}:3" in errors[0], err
