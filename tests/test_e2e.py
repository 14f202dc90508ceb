"""End to end on the real pretrained MiniLM-L6-H384 and real SST-2: exactly what `make demo` runs
(configs/demo.yaml, 2 worker processes through dynabert-launch), with the accuracy bars: teacher dev
accuracy >= 0.80 and width 0.5 within 3 points of the teacher, under the honest protocol (validation
split for importance and selection, one supernet); then the select stage's table and choice."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, job_report

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo_run(glue_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_")}
    env.update(GLUE_DIR=glue_dir, PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "launcher", "--config", os.path.join(ROOT, "configs", "demo.yaml"),
           "--nproc_per_node", "2", "--set", f"run.out_dir={out}", "--set", "run.progress=false"]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, job_report(done.stdout + done.stderr, os.path.join(out, "logs"))
    results = json.load(open(os.path.join(out, "results.json")))
    # Shown with `pytest -s` and kept in the run directory: the figures the issue asks to report.
    print(json.dumps({"teacher": results["teacher"], "seconds": results["seconds"],
                      "widths": [(r["width"], r["metrics"]) for r in results["widths"]]}, indent=1))
    return out, results, done.stdout


def test_uses_real_glue_data(demo_run):
    log = open(os.path.join(demo_run[0], "logs", "workerlog.0")).read()
    assert "data train: GLUE_DIR" in log and "SST-2/dev.tsv: 872 rows" in log


def test_teacher_reaches_080(demo_run):
    _, results, _ = demo_run
    assert results["teacher"]["accuracy"] >= 0.80


def test_width_half_within_three_points_of_teacher(demo_run):
    _, results, _ = demo_run
    by_width = {r["width"]: r["metrics"]["accuracy"] for r in results["widths"]}
    assert set(by_width) == {1.0, 0.75, 0.5, 0.25}
    assert by_width[0.5] >= results["teacher"]["accuracy"] - 0.03


def test_table_printed_and_models_exported(demo_run):
    out, results, stdout = demo_run
    assert "| width | parameters | encoder parameters | dev accuracy | teacher accuracy | delta |" in stdout
    for row in results["widths"]:
        export = os.path.join(out, "export", f"width_{row['width']:g}")
        assert os.path.exists(os.path.join(export, "inference", "model.pdiparams"))
    assert results["world_size"] == 2 and results["global_batch_size"]["compress"] == 32
    assert results["throughput"]["compress"]["samples_per_s"] > 0


def test_honest_protocol_is_the_default(demo_run):
    _, results, stdout = demo_run
    assert results["protocol"]["select_on"] == "validation" and results["protocol"]["select"] == "supernet"
    assert "Protocol: importance and checkpoint selection on 500 held-out training rows" in stdout
    steps = {m["step"] for m in results["compress_best"]["widths"].values()}
    assert len(steps) == 1  # every width cut from one supernet


def test_select_prints_the_candidates_and_picks_one(demo_run):
    out, results, stdout = demo_run
    assert "| candidate | width | runtime | precision |" in stdout and "select: chose" in stdout
    card = json.load(open(os.path.join(out, "select", "model", "card.json")))
    assert card["latency"]["median_ms"] <= 1000  # the demo's budget
    # chosen on the 500 held-out training rows, reported on all of dev (read once, for this model)
    assert card["metric"]["selected_on"]["split"] == "validation" and card["metric"]["selected_on"]["examples"] == 500
    assert card["metric"]["split"] == "dev" and card["metric"]["examples"] == 872
    assert card["metric"]["source"].startswith("GLUE_DIR ") and not card["metric"]["data_differs_from_run"]
    rows = {r["name"]: r for r in json.load(open(os.path.join(out, "select", "candidates.json")))["rows"]}
    fp32, int8 = rows["width_0.5/onnxruntime/fp32"], rows["width_0.5/onnxruntime/int8"]
    assert int8["metric"] >= fp32["metric"] - 0.015  # int8 evaluated, within 1.5 points of fp32
