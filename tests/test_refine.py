"""The refine stage (issue 27): each kept width distilled alone from the teacher after compress, the best
evaluation on the selection split kept (the unrefined model included), export reading what it kept. Kills
and restarts inside refine, on one and two nodes: tests/test_crash_matrix.py."""
import json
import os

import numpy as np
import pytest

from dynabert.collectives import SingleProcess
from dynabert.config import Config, RefineConfig
from dynabert.errors import UserError
from dynabert.pipeline import run
from dynabert.stages.refine import kept_dir, refine_optim, refined_widths
from launcher.config import load_config
from launcher.run_dir import stages_to_run
from tests.conftest import ROOT
from tests.jobs import load_params, same_parameters

TINY = os.path.join(ROOT, "configs", "tiny.yaml")


def _config(*sets, out="runs/x"):
    return load_config(TINY, [f"run.out_dir={out}", *sets])


@pytest.mark.parametrize("sets, key", [
    (["refine.steps=-1"], "refine.steps"),
    (["refine.steps=4", "refine.widths=[0.3]"], "refine.widths"),
    (["refine.steps=4", "export.widths=[1.0,0.5]", "refine.widths=[0.25]"], "refine.widths"),
    (["refine.steps=4", "refine.optim.max_steps=3"], "refine.optim.max_steps"),
    (["refine.steps=4", "refine.optim.epochs=2"], "refine.optim.epochs"),
    (["refine.steps=4", "refine.optim.patience=2"], "refine.optim.patience"),
    (["refine.steps=4", "refine.optim.overlap_allreduce=true"], "refine.optim.overlap_allreduce"),
    (["refine.steps=4", "compress.depths=[1.0,0.5]"], "refine.steps"),
    (["refine.optim.learning_rate=0"], "refine.optim.learning_rate"),
])
def test_bad_refine_settings_are_refused_with_their_key(sets, key):
    with pytest.raises(UserError, match=f"^--set: {key.replace('.', '[.]')}:"):
        _config(*sets)


def test_off_by_default_and_which_widths_it_refines():
    assert RefineConfig().steps == 0 and refined_widths(Config()) == []
    assert "refine" not in stages_to_run(Config())
    every = _config("refine.steps=4")
    assert refined_widths(every) == [1.0, 0.75, 0.5, 0.25] and "refine" in stages_to_run(every)
    assert refined_widths(_config("refine.steps=4", "export.widths=[0.5,0.25]")) == [0.5, 0.25]
    some = _config("refine.steps=4", "refine.widths=[0.25,0.5]", out="/r")
    assert refined_widths(some) == [0.5, 0.25]
    assert kept_dir(some, 0.25) == "/r/refine/width_0.25"
    assert kept_dir(some, 0.75) == "/r/compress/best/width_0.75"


@pytest.mark.parametrize("steps, per_epoch, epochs", [(5, 20, 1.0), (20, 20, 1.0), (21, 20, 2.0), (100, 7, 15.0)])
def test_the_length_is_refine_steps_in_as_many_epochs_as_it_takes(steps, per_epoch, epochs):
    optim = refine_optim(_config(f"refine.steps={steps}"), per_epoch)
    assert (optim.max_steps, optim.epochs) == (steps, epochs)


def _rows(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def _run(tiny_model_dir, out, *sets):
    """On the built-in data (not $GLUE_DIR's SST-2, whose words the tiny vocabulary lacks), where the tiny
    teacher learns in seconds."""
    cfg = load_config(TINY, [
        f"model.name_or_path={tiny_model_dir}", f"run.out_dir={out}", "run.stages=[finetune,compress,refine,export]",
        "compress.optim.max_steps=4",
        "data.dev_limit=50", "run.log_every=1", "refine.widths=[0.5,0.25]", "refine.steps=8",
        "refine.optim.eval_every=4", "export.inference_model=false", *sets])
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GLUE_DIR", "")
        return run(cfg, SingleProcess())


@pytest.fixture(scope="module")
def refined(tiny_model_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("refined"))
    return out, _run(tiny_model_dir, out, "refine.optim.learning_rate=1e-3")


def test_each_refined_width_trains_its_steps_and_is_evaluated_from_step_0(refined):
    out, results = refined
    rows = _rows(out)
    for w in ("0.5", "0.25"):
        assert [r["step"] for r in rows if r["kind"] == f"refine_width_{w}"] == list(range(1, 9))
        assert [r["step"] for r in rows if r["kind"] == f"refine_width_{w}_eval"] == [0, 4, 8]
        trained = {k.split("/")[0] for r in rows if r["kind"] == f"refine_width_{w}" for k in r}
        assert {"rep", "logit", "task", "loss"} <= trained  # compress's loss terms, one sub-network
    assert not any(r["kind"].startswith("refine_width_1") or r["kind"].startswith("refine_width_0.75")
                   for r in rows)
    assert sorted(results["refine_best"]) == ["0.25", "0.5"]


def test_a_width_still_rising_at_the_last_evaluation_is_flagged(refined):
    out, _ = refined
    rows = _rows(out)
    for w in ("0.5", "0.25"):
        evals = [r["accuracy"] for r in rows if r["kind"] == f"refine_width_{w}_eval"]
        done = json.load(open(os.path.join(out, "checkpoints", "refine", f"width_{w}", "DONE.json")))
        assert done["still_rising"] == (evals[-1] > evals[-2])


def test_the_kept_model_is_the_best_evaluation_and_export_reads_it(refined):
    out, results = refined
    rows = _rows(out)
    for w in ("0.5", "0.25"):
        evals = {r["step"]: r["accuracy"] for r in rows if r["kind"] == f"refine_width_{w}_eval"}
        kept = results["refine_best"][w]
        best = max(evals.values())
        assert kept["accuracy"] == best and kept["step"] == min(s for s, a in evals.items() if a == best)
        exported = load_params(os.path.join(out, "export", f"width_{w}", "model_state.pdparams"))
        same_parameters(load_params(os.path.join(out, "refine", f"width_{w}", "model_state.pdparams")), exported)
    refined_steps = [w for w in ("0.5", "0.25") if results["refine_best"][w]["step"] > 0]
    assert refined_steps, "no width improved on its unrefined model: the replacement is not exercised"
    w = refined_steps[0]
    compressed = load_params(os.path.join(out, "compress", "best", f"width_{w}", "model_state.pdparams"))
    exported = load_params(os.path.join(out, "export", f"width_{w}", "model_state.pdparams"))
    assert any(not np.array_equal(compressed[k], exported[k]) for k in compressed)
    # the widths not refined are exported from compress's kept models
    same_parameters(load_params(os.path.join(out, "compress", "best", "width_0.75", "model_state.pdparams")),
                    load_params(os.path.join(out, "export", "width_0.75", "model_state.pdparams")))


def test_a_refine_that_never_beats_the_unrefined_model_exports_compress_s_model(tiny_model_dir, tmp_path):
    """With a vanishing learning rate no evaluation improves on step 0: the exported model is compress's."""
    out = str(tmp_path)
    results = _run(tiny_model_dir, out, "refine.optim.learning_rate=1e-20", "refine.widths=[0.25]")
    assert results["refine_best"]["0.25"]["step"] == 0
    compressed = load_params(os.path.join(out, "compress", "best", "width_0.25", "model_state.pdparams"))
    exported = load_params(os.path.join(out, "export", "width_0.25", "model_state.pdparams"))
    assert sorted(compressed) == sorted(exported)
    for name in compressed:
        np.testing.assert_array_equal(compressed[name], exported[name])
