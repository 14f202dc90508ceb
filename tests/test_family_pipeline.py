"""The whole pipeline on a tiny random ERNIE and a tiny random RoBERTa (tests/families.py; no weights can be
downloaded here), with the assertions the BERT tests make, one family per test:

* one process, in this process (``run_worker``): finetune, compress (importance, reorder, the width supernet
  with distillation), compress_depth, export; then select (ONNX Runtime and Paddle Inference, fp32 and int8)
  and dynabert-predict on the chosen model; the exported sub-model's logits, through ``load_exported``, Paddle
  Inference and ONNX Runtime, equal the kept supernet's at that width and depth;
* exact resume: the same run killed in the compress stage after a checkpoint and resumed with ``--resume auto``
  ends with the same results, exports and supernets, bit for bit, each step recorded once;
* two processes equal one: ``dynabert-launch --nproc_per_node 2`` ends with the one-process run's parameters
  (within the round-off of a different summation order, as tests/test_distributed.py measures it) and
  dev metrics.

(The kill is made in-process: the fault's SIGKILL becomes an exception, so the checkpoints on disk are exactly
what a killed process leaves; tests/test_crash_matrix.py kills real processes.)"""
import io
import json
import os

import numpy as np
import paddle
import pytest

from dynabert import faults
from tests.conftest import job_report
from tests.jobs import TINY, launch, load_params

pytestmark = pytest.mark.dist

# 256 training rows at a global batch of 32: 8 steps an epoch; one epoch per stage, a checkpoint every 4 steps,
# one evaluation per stage (at its end), so the kept models are the last ones whatever the metric's round-off.
SETTINGS = ["data.train_limit=320", "data.validation_rows=64", "data.dev_limit=64", "finetune.epochs=1",
            "compress.optim.epochs=1", "compress.optim.eval_every=0", "compress.widths=[1.0,0.5]",
            "compress.depths=[1.0,0.5]", "run.checkpoint_every_steps=4",
            "run.stages=[finetune,compress,compress_depth,export]"]
SELECT = ["run.stages=[select]", "select.runtimes=[onnxruntime,paddle]", "select.precisions=[fp32,int8]",
          "select.min_runs=1", "select.batch_size=4", "select.seq_len=16"]
EXPORTS = ["width_0.5", "width_0.5_depth_0.5", "width_1", "width_1_depth_0.5"]


class _Killed(BaseException):
    """What the fault's SIGKILL becomes in this process."""


def _fire_by_raising(self, stage, step):
    if self.once and os.path.exists(self.once):
        return
    with open(self.once, "w") as f:
        f.write(f"rank {self.rank} killed at {self.point} {step} of {stage}\n")
    raise _Killed(f"{self.point} {step} of {stage}")


def _args(model_dir, out, *extra):
    sets = [f"model.name_or_path={model_dir}", f"run.out_dir={out}", *SETTINGS, *extra]
    return ["--config", TINY] + [a for s in sets for a in ("--set", s)]


def _results(out):
    results = json.load(open(os.path.join(out, "results.json")))
    for key in ("seconds", "throughput", "select"):
        results.pop(key, None)
    return results


def _parameters(out):
    found = {name: load_params(os.path.join(out, "export", name, "model_state.pdparams")) for name in EXPORTS}
    for stage in ("compress", "compress_depth"):
        found[stage] = load_params(os.path.join(out, stage, "supernet.pdparams"))
    return found


def _metric_rows(out):
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return sorted((r["kind"], r["step"]) for r in rows)


def _batch(family):
    from tests.test_families import family_batch

    return family_batch(family, seed=3, b=4, t=9)


def _supernet_logits(out, family, batch, width, depth):
    """The kept depth supernet (compress_depth/best/supernet.pdparams) at (width, depth)."""
    from dynabert.model.depth import DepthSupernet
    from dynabert.model.pretrained import load_model
    from dynabert.model.supernet import Supernet

    net = DepthSupernet(Supernet(load_model(os.path.join(out, "teacher"), 2), (1.0, 0.5)), (1.0, 0.5))
    net.set_state_dict(paddle.load(os.path.join(out, "compress_depth", "best", "supernet.pdparams")))
    net.eval()
    net.set_width(width)
    t = {k: paddle.to_tensor(v) for k, v in batch.items()}
    with paddle.no_grad(), net.at_depth(depth):
        return net(t["input_ids"], t["token_type_ids"], t["attention_mask"]).numpy()


@pytest.mark.parametrize("family", ["ernie", "roberta"])
def test_family_runs_the_whole_pipeline_resumes_exactly_and_two_processes_equal_one(
        family, family_model_dir, run_worker, tmp_path, monkeypatch):
    from dynabert.deploy.onnx_export import ort_session
    from dynabert.model.export import inference_predictor, load_exported, run_predictor
    from launcher import predict_cli

    model_dir = family_model_dir(family)
    # The two-process job starts first and runs beside the in-process runs.
    two = str(tmp_path / "two")
    job = launch(_args(model_dir, two))

    # one process, uninterrupted; then select and predict on it
    one = str(tmp_path / "one")
    assert run_worker(*_args(model_dir, one)) == (0, "")
    results = _results(one)
    assert sorted(os.listdir(os.path.join(one, "export"))) == EXPORTS
    for name in EXPORTS:
        with open(os.path.join(one, "export", name, "dynabert_export.json")) as f:
            assert json.load(f)["family"] == family
    code, err = run_worker(*_args(model_dir, one, *SELECT))
    assert code == 0, err
    table = json.load(open(os.path.join(one, "select", "candidates.json")))
    assert {row["name"].split("/", 1)[1] for row in table["rows"]} == {
        "onnxruntime/fp32", "onnxruntime/int8", "paddle/fp32", "paddle/int8"}
    served = os.path.join(one, "select", "model")
    out = io.StringIO()
    assert predict_cli.main([served], stdin=io.StringIO("a charming film .\nthe plot is dull .\t我爱电影\n"),
                            stdout=out) == 0
    assert len(out.getvalue().strip().splitlines()) == 3  # a header and one line per sentence

    # the exported sub-model (both loaders and ONNX) gives the kept supernet's logits
    batch = _batch(family)
    for name, width, depth in (("width_0.5_depth_0.5", 0.5, 0.5), ("width_1", 1.0, 1.0)):
        expected = _supernet_logits(one, family, batch, width, depth)
        path = os.path.join(one, "export", name)
        model = load_exported(path)
        t = {k: paddle.to_tensor(v) for k, v in batch.items()}
        with paddle.no_grad():
            np.testing.assert_allclose(model(t["input_ids"], token_type_ids=t["token_type_ids"],
                                             attention_mask=t["attention_mask"]).numpy(), expected, rtol=0, atol=1e-5)
        np.testing.assert_allclose(run_predictor(inference_predictor(path), batch), expected, rtol=0, atol=1e-5)
        onnx = os.path.join(one, "select", "artifacts", f"width_{width:g}_depth_{depth:g}", "onnx", "model.onnx")
        got = ort_session(onnx).run(None, {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")})
        np.testing.assert_allclose(got[0], expected, rtol=0, atol=1e-5)

    # killed in compress after the checkpoint of step 4, resumed: the same run, bit for bit
    resumed = str(tmp_path / "resumed")
    monkeypatch.setattr(faults.Fault, "fire", _fire_by_raising)
    monkeypatch.setenv(faults.ENV, f"rank=0,stage=compress,step=6,once={tmp_path / 'fired'}")
    with pytest.raises(_Killed):
        run_worker(*_args(model_dir, resumed))
    assert not os.path.exists(os.path.join(resumed, "export"))
    assert run_worker(*_args(model_dir, resumed), "--resume", "auto") == (0, "")
    assert "compress: resuming from" in run_worker.out
    assert _results(resumed) == results
    a, b = _parameters(one), _parameters(resumed)
    for part in a:
        assert sorted(a[part]) == sorted(b[part])
        for name in a[part]:
            np.testing.assert_array_equal(b[part][name], a[part][name], err_msg=f"{part} {name}")
    rows = _metric_rows(resumed)
    assert len(rows) == len(set(rows)) and rows == _metric_rows(one)

    # two processes equal one
    log = job.communicate(timeout=900)[0]
    assert job.returncode == 0, job_report(log, os.path.join(two, "logs"))
    a, b = _parameters(one), _parameters(two)
    for part in a:
        diff2 = total2 = 0.0
        for name in a[part]:
            if name.endswith("k_proj.bias") or name.endswith("k_proj.fn.bias"):
                # The key bias's true gradient is zero (softmax cancels it); Adam turns round-off into
                # full-size steps, differently in any two summation orders (tests/test_distributed.py).
                continue
            diff2 += float(np.sum((a[part][name] - b[part][name]) ** 2))
            total2 += float(np.sum(a[part][name] ** 2))
        assert (diff2 / total2) ** 0.5 <= 1e-5, (part, (diff2 / total2) ** 0.5)
    two_results = _results(two)
    for row_one, row_two in zip(results["widths"], two_results["widths"]):
        assert row_one["parameters"] == row_two["parameters"]
        for metric, value in row_one["metrics"].items():
            assert row_two["metrics"][metric] == pytest.approx(value, abs=1.5 / 64), metric  # one example of 64
