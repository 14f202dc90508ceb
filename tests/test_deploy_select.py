"""select on a tiny finished run, through ``dynabert-select`` in a subprocess as a user runs it: the table,
the card's fields and types, the ready-to-serve directory, reuse of the derived models, and exit 2 when nothing
meets the constraints."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from paddlenlp.transformers import BertTokenizer

from dynabert.config import Config, DataConfig, RunConfig
from dynabert.data import record
from dynabert.data.task_data import load_task_data
from dynabert.deploy.choose import Constraints
from dynabert.deploy.select import SelectOptions, select_run
from dynabert.deploy.serve_dir import load_served
from dynabert.errors import UserError
from dynabert.model.export import extract_submodel, save_exported
from dynabert.model.pretrained import tiny_bert
from dynabert.model.supernet import Supernet
from launcher import select_cli
from launcher.config import dump_config, load_config
from tests.conftest import ROOT, _builtin_vocab
from tests.reference_bert import random_batch

pytestmark = pytest.mark.dist  # the select run is a subprocess

FAST = dict(threads=1, batch_size=4, seq_len=16, warmup=1, min_runs=2, min_seconds=0.0, calibration_rows=32)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished run of a tiny random BERT: export/width_1 and export/width_0.5, and a config whose data is the
    built-in synthetic SST-2 (an empty GLUE directory, no download), 64 dev rows."""
    root = tmp_path_factory.mktemp("select")
    vocab = _builtin_vocab()
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(vocab_file=str(root / "vocab.txt"), do_lower_case=True)
    supernet = Supernet(tiny_bert(vocab_size=len(vocab)), (1.0, 0.5))
    supernet.eval()
    run = root / "run"
    for width in (1.0, 0.5):
        save_exported(extract_submodel(supernet, width), width, tokenizer, str(run / "export" / f"width_{width:g}"))
    (root / "glue").mkdir()
    cfg = Config(data=DataConfig(glue_dir=str(root / "glue"), allow_download=False, max_seq_len=32, dev_limit=64,
                                 validation_rows=64),
                 run=RunConfig(out_dir=str(run), eval_batch_size=16))
    (run / "config.yaml").write_text(dump_config(cfg))
    # What the training run recorded of its data (the pipeline writes it): the built-in set, 64 held out.
    data = load_task_data(cfg, tokenizer, needs_train=True, log=lambda _: None)
    record.write(str(run), record.describe(data, cfg))
    return str(run)


FAST_FLAGS = ["--threads", "1", "--batch-size", "4", "--seq-len", "16", "--min-runs", "2", "--min-seconds", "0",
              "--calibration-rows", "32"]


@pytest.fixture(scope="module")
def selected(tiny_run):
    """``python -m launcher.select_cli RUN`` with no constraints: (its candidates.json, its standard output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_")}
    env.update(PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "launcher.select_cli", tiny_run] + FAST_FLAGS, env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with open(os.path.join(tiny_run, "select", "candidates.json")) as f:
        return json.load(f), done.stdout


def test_every_candidate_is_measured_once(selected):
    result, stdout = selected
    names = [r["name"] for r in result["rows"]]
    assert sorted(names) == sorted(f"width_{w}/{r}/{p}" for w in ("1", "0.5") for r in ("paddle", "onnxruntime")
                                   for p in ("fp32", "int8"))
    for r in result["rows"]:
        assert 0.0 <= r["metric"] <= 1.0 and r["latency_ms"] > 0 and r["p90_ms"] >= r["latency_ms"]
        assert r["runs"] >= FAST["min_runs"] and r["size_bytes"] > 0
    # fp32 in both runtimes computes the same logits (test_deploy_onnx), so the same accuracy
    by = {r["name"]: r for r in result["rows"]}
    for w in ("1", "0.5"):
        assert by[f"width_{w}/paddle/fp32"]["metric"] == by[f"width_{w}/onnxruntime/fp32"]["metric"]
    assert any(r["pareto"] for r in result["rows"])
    fastest = [r for r in result["rows"] if r["fastest_runtime"]]
    assert len(fastest) == 4  # one per (sub-model, precision)
    assert "| candidate |" in stdout and f"select: chose {result['chosen']}" in stdout
    for name in ("candidates.json", "candidates.md", "metric_vs_latency.png"):
        assert os.path.getsize(os.path.join(result["out_dir"], name)) > 0


def test_card_fields_and_types(selected):
    result, _ = selected
    with open(os.path.join(result["served_dir"], "card.json")) as f:
        card = json.load(f)
    chosen = next(r for r in result["rows"] if r["name"] == result["chosen"])
    assert card["task"] == "sst-2" and card["labels"] == ["0", "1"] and card["max_seq_len"] == 32
    assert card["metric"]["name"] == "accuracy" and card["metric"]["split"] == "dev"
    assert card["metric"]["examples"] == 64 and card["metric"]["value"] == result["reported"]["metric"]
    decided = card["metric"]["selected_on"]
    assert decided["split"] == "validation" and decided["examples"] == 64 and decided["value"] == chosen["metric"]
    for figure in (card["metric"], decided):  # each figure names its data
        assert "built-in synthetic" in figure["source"] and len(figure["digest"]) == 16
    assert card["metric"]["data_differs_from_run"] is False
    latency = card["latency"]
    assert isinstance(latency["median_ms"], float) and isinstance(latency["p90_ms"], float)
    assert (latency["batch_size"], latency["seq_len"], latency["threads"]) == (4, 16, 1)
    assert latency["median_ms"] == chosen["latency_ms"]
    machine = card["machine"]
    for key in ("cpu_model", "cpus_available", "platform", "python", "threads", "packages"):
        assert key in machine
    assert isinstance(machine["cpus_available"], int) and machine["packages"]["onnxruntime"]
    assert isinstance(card["parameters"], int) and card["parameters"] == chosen["parameters"]
    assert isinstance(card["width"], float) and card["width"] in (1.0, 0.5)
    assert card["depth"] is None and card["layers"] == 2 and isinstance(card["num_heads"], int)
    assert card["precision"] in ("fp32", "int8") and card["runtime"] in ("paddle", "onnxruntime")
    assert f"width_{card['width']:g}/{card['runtime']}/{card['precision']}" == result["chosen"]
    assert card["source"]["run_dir"] == os.path.abspath(result["run_dir"])
    assert card["source"]["export_dir"].endswith(f"width_{card['width']:g}")
    commit = card["source"]["git_commit"]
    assert commit is None or (len(commit) == 40 and all(c in "0123456789abcdef" for c in commit))
    for name in list(card["files"].values()) + ["vocab.txt", "tokenizer_config.json"]:
        assert os.path.isfile(os.path.join(result["served_dir"], name)), name


def test_served_directory_runs_like_the_candidate(selected, tiny_run):
    result, _ = selected
    served = load_served(result["served_dir"])
    chosen = next(r for r in result["rows"] if r["name"] == result["chosen"])
    from dynabert.deploy.runtime import load_runner
    original = load_runner(chosen["runtime"], chosen["precision"], chosen["files"])
    batch = {k: v for k, v in random_batch(3, 4, 9, {-1: -3}, labels=False).items()}
    np.testing.assert_array_equal(served.runner(batch), original(batch))
    assert served.tokenizer.vocab_size == len(_builtin_vocab())


def test_a_second_select_reuses_the_artifacts(selected, tiny_run):
    result, _ = selected
    stamp = os.path.join(result["out_dir"], "artifacts", "width_1", "paddle_int8", "source.json")
    before = os.stat(stamp).st_mtime_ns
    cfg = load_config(os.path.join(tiny_run, "config.yaml"))
    lines = []
    again = select_run(tiny_run, cfg=cfg, options=SelectOptions(**{**FAST, "batch_size": 1}), log=lines.append)
    assert os.stat(stamp).st_mtime_ns == before and not any("int8 (" in line for line in lines)
    assert {r["name"]: r["metric"] for r in again["rows"]} == {r["name"]: r["metric"] for r in result["rows"]}


def test_constraints_choose_within_them(tiny_run, selected):
    result, _ = selected
    smallest = min(r["parameters"] for r in result["rows"])
    cfg = load_config(os.path.join(tiny_run, "config.yaml"))
    out = select_run(tiny_run, cfg=cfg, options=SelectOptions(**FAST, constraints=Constraints(max_params=smallest)),
                     log=lambda _: None)
    assert out["chosen"].startswith("width_0.5/")


def test_cli_nothing_meets_the_constraints_exits_2_naming_the_closest(tiny_run, capsys):
    argv = [tiny_run] + FAST_FLAGS + ["--max-latency-ms", "1e-6", "--min-metric", "1.01"]
    assert select_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no candidate meets --max-latency-ms 1e-06, --min-metric 1.01")
    assert err[0].count("misses by") >= 3 and "closest: width_" in err[0]


def test_cli_bad_run_directory_exits_2(tmp_path, capsys):
    assert select_cli.main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert select_cli.main([str(tmp_path), "--runtimes", "paddle"]) == 2  # no config.yaml


def test_sequence_longer_than_the_model_is_refused(tiny_run):
    cfg = load_config(os.path.join(tiny_run, "config.yaml"))
    with pytest.raises(UserError, match="--seq-len"):
        select_run(tiny_run, cfg=cfg, options=SelectOptions(**{**FAST, "seq_len": 10_000}), log=lambda _: None)
