"""compress.width_sampling (issue 27): "all" widths every step, or "sandwich" (the widest, the narrowest and
k others drawn from (run.seed, step), so every rank and every resumed run draws the same)."""
import json
import os
from collections import Counter

import pytest

from dynabert.collectives import SingleProcess
from dynabert.pipeline import run
from dynabert.train.step import widths_for_step
from launcher.config import load_config
from tests.conftest import ROOT

WIDTHS = (1.0, 0.75, 0.5, 0.25)


def test_all_is_every_width_widest_first():
    assert widths_for_step((0.25, 1.0, 0.5), sampling="all", random_widths=1, seed=0, step=3) == (1.0, 0.5, 0.25)


def test_sandwich_keeps_both_ends_and_draws_k_of_the_rest():
    drawn = [widths_for_step(WIDTHS, sampling="sandwich", random_widths=1, seed=7, step=s) for s in range(200)]
    for widths in drawn:
        assert widths[0] == 1.0 and widths[-1] == 0.25 and len(widths) == 3
        assert list(widths) == sorted(widths, reverse=True)
    middle = Counter(w[1] for w in drawn)
    assert set(middle) == {0.75, 0.5} and min(middle.values()) > 60  # both drawn, roughly evenly
    two = widths_for_step(WIDTHS, sampling="sandwich", random_widths=2, seed=7, step=5)
    assert two == WIDTHS  # k = every middle width: all of them
    assert widths_for_step(WIDTHS, sampling="sandwich", random_widths=0, seed=7, step=5) == (1.0, 0.25)


def test_sandwich_draw_depends_on_seed_and_step_only():
    a = [widths_for_step(WIDTHS, sampling="sandwich", random_widths=1, seed=3, step=s) for s in range(30)]
    b = [widths_for_step(list(reversed(WIDTHS)), sampling="sandwich", random_widths=1, seed=3, step=s)
         for s in range(30)]
    assert a == b  # another process, the widths listed in another order: the same draw
    c = [widths_for_step(WIDTHS, sampling="sandwich", random_widths=1, seed=4, step=s) for s in range(30)]
    assert a != c


def test_sandwich_random_is_at_most_the_widths_between_the_ends():
    from dynabert.errors import UserError

    with pytest.raises(UserError, match="compress.sandwich_random: must be >= 0"):
        load_config(None, ["compress.width_sampling=sandwich", "compress.sandwich_random=-1"])
    for k in (2, 3):  # as many as lie between, or more: every width, every step
        assert {widths_for_step(WIDTHS, sampling="sandwich", random_widths=k, seed=1, step=s)
                for s in range(10)} == {tuple(WIDTHS)}
    assert widths_for_step((1.0, 0.5), sampling="sandwich", random_widths=1, seed=1, step=0) == (1.0, 0.5)
    assert widths_for_step((1.0, 0.75, 0.5, 0.25), sampling="sandwich", random_widths=0, seed=1, step=0) == (1.0, 0.25)
    load_config(None, ["compress.widths=[1.0,0.5]"])  # the default sandwich needs no width between
    with pytest.raises(UserError, match="compress.width_sampling: must be 'all' or 'sandwich'"):
        load_config(None, ["compress.width_sampling=some"])


def test_the_compress_stage_trains_the_drawn_widths_each_step(tiny_model_dir, tmp_path):
    """The run log's per-step loss terms name exactly the widths the draw gives for that step."""
    cfg = load_config(os.path.join(ROOT, "configs", "tiny.yaml"), [
        f"model.name_or_path={tiny_model_dir}", f"run.out_dir={tmp_path}", "run.stages=[finetune,compress]",
        "finetune.max_steps=4", "compress.optim.max_steps=12", "run.log_every=1", "data.train_limit=600",
        "data.validation_rows=100", "data.dev_limit=50", "compress.width_sampling=sandwich", "run.seed=5"])
    run(cfg, SingleProcess())
    rows = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
    steps = [r for r in rows if r.get("kind") == "compress"]
    assert [r["step"] for r in steps] == list(range(1, 13))
    for r in steps:
        trained = sorted({float(k[1:].split("/")[0]) for k in r if k.startswith("w") and "/" in k}, reverse=True)
        assert tuple(trained) == widths_for_step(WIDTHS, sampling="sandwich", random_widths=1, seed=5,
                                                 step=r["step"] - 1)


def _tiny_compress(tiny_model_dir, out, *extra):
    cfg = load_config(os.path.join(ROOT, "configs", "tiny.yaml"), [
        f"model.name_or_path={tiny_model_dir}", f"run.out_dir={out}", "run.stages=[finetune,compress]",
        "finetune.max_steps=4", "data.train_limit=600", "data.validation_rows=100", "data.dev_limit=50",
        "compress.optim.epochs=10", "compress.optim.max_steps=60", "compress.optim.eval_every=2",
        "run.log_every=1", *extra])
    result = run(cfg, SingleProcess())
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    evals = [(r["step"], r["accuracy"]) for r in rows if r.get("kind") == "compress_eval/w0.25"]
    return result, [r["step"] for r in rows if r.get("kind") == "compress"], evals


def test_patience_stops_when_the_narrowest_width_stops_improving(tiny_model_dir, tmp_path):
    """compress.optim.patience 2: training ends at the first evaluation that makes two in a row without a
    new best for width 0.25; without patience the same run goes on to the cap."""
    _, steps, evals = _tiny_compress(tiny_model_dir, tmp_path / "patience", "compress.optim.patience=2")
    _, all_steps, all_evals = _tiny_compress(tiny_model_dir, tmp_path / "cap")
    assert all_steps[-1] == 60
    stop = steps[-1]
    assert evals[-1][0] == stop  # the last step trained is the evaluation that decided
    assert stop < 60, "the narrowest width improved at every evaluation: nothing to test"
    assert evals == all_evals[:len(evals)]  # the same run up to the stop
    best, since, first_stop = None, 0, None
    for step, acc in all_evals:  # the rule, replayed on the uninterrupted run's evaluations
        if best is None or acc > best:
            best, since = acc, 0
        else:
            since += 1
        if since >= 2:
            first_stop = step
            break
    assert stop == first_stop
