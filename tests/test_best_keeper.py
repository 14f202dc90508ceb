"""Which evaluation the width and depth stages keep (compress.select), on hand-written evaluations: the
"supernet" rule keeps a step only when the mean over all sub-models improves, "per_width" each sub-model's
own best; a NaN metric or a non-finite weight is never kept."""
import os
from types import SimpleNamespace

import paddle
import pytest

from dynabert.config import CompressConfig, Config, RunConfig
from dynabert.data.tasks import get_task
from dynabert.stages.common import StageContext
from dynabert.stages.supernet_training import BestKeeper


class MainOnly:
    """One process: rank 0's work runs here."""

    def run_on_main(self, fn):
        return fn()


class TinySupernet:
    def __init__(self):
        self.model = paddle.nn.Linear(2, 2)

    def state_dict(self):
        return self.model.state_dict()


def make_keeper(tmp_path, select: str, entries: str = "widths"):
    cfg = Config(compress=CompressConfig(select=select), run=RunConfig(out_dir=str(tmp_path)))
    ctx = StageContext(cfg=cfg, comms=MainOnly(), log=None, data=SimpleNamespace(task="sst-2", spec=get_task("sst-2")),
                       resume=None)
    saved = []
    supernet = TinySupernet()
    keeper = BestKeeper(ctx, supernet=supernet, root=str(tmp_path / "best"), entries=entries,
                        name_of=lambda w: f"{w:g}", save_models=lambda keys: saved.append(list(keys)), state=None)
    return keeper, supernet, saved


def test_supernet_keeps_the_step_with_the_best_mean_for_every_width(tmp_path):
    keeper, _, saved = make_keeper(tmp_path, "supernet")
    keeper.offer(10, {1.0: {"accuracy": 0.8}, 0.5: {"accuracy": 0.7}})  # mean 0.75
    keeper.offer(20, {1.0: {"accuracy": 0.9}, 0.5: {"accuracy": 0.5}})  # mean 0.70: width 1.0 better, not kept
    assert keeper.state["step"] == 10 and keeper.state["mean"] == pytest.approx(0.75)
    assert keeper.state["widths"] == {"1": {"accuracy": 0.8, "step": 10}, "0.5": {"accuracy": 0.7, "step": 10}}
    keeper.offer(30, {1.0: {"accuracy": 0.85}, 0.5: {"accuracy": 0.75}})  # mean 0.80
    assert keeper.state["step"] == 30 and keeper.state["widths"]["0.5"]["step"] == 30
    assert saved == [[1.0, 0.5], [1.0, 0.5]]
    assert os.path.isfile(tmp_path / "best" / "supernet.pdparams")


def test_per_width_keeps_each_widths_own_best_and_no_supernet(tmp_path):
    keeper, _, saved = make_keeper(tmp_path, "per_width")
    keeper.offer(10, {1.0: {"accuracy": 0.8}, 0.5: {"accuracy": 0.7}})
    keeper.offer(20, {1.0: {"accuracy": 0.9}, 0.5: {"accuracy": 0.5}})
    keeper.offer(30, {1.0: {"accuracy": 0.9}, 0.5: {"accuracy": 0.6}})  # ties and losses: nothing
    assert keeper.state["widths"] == {"1": {"accuracy": 0.9, "step": 20}, "0.5": {"accuracy": 0.7, "step": 10}}
    assert saved == [[1.0, 0.5], [1.0]]
    assert not os.path.exists(tmp_path / "best" / "supernet.pdparams")


def test_depth_entries_are_named_per_pair(tmp_path):
    cfg = Config(compress=CompressConfig(select="per_width"), run=RunConfig(out_dir=str(tmp_path)))
    ctx = StageContext(cfg=cfg, comms=MainOnly(), log=None, data=SimpleNamespace(task="sst-2", spec=get_task("sst-2")),
                       resume=None)
    keeper = BestKeeper(ctx, supernet=TinySupernet(), root=str(tmp_path / "best"), entries="models",
                        name_of=lambda pair: f"{pair[0]:g}_{pair[1]:g}", save_models=lambda keys: None, state=None)
    keeper.offer(5, {(1.0, 0.5): {"accuracy": 0.6}})
    assert keeper.state["models"] == {"1_0.5": {"accuracy": 0.6, "step": 5}} and "widths" not in keeper.state


@pytest.mark.parametrize("select", ["supernet", "per_width"])
def test_nan_metric_or_non_finite_weights_are_never_kept(tmp_path, select):
    keeper, supernet, saved = make_keeper(tmp_path, select)
    keeper.offer(10, {1.0: {"accuracy": float("nan")}, 0.5: {"accuracy": float("nan")}})
    supernet.model.weight.set_value(paddle.full([2, 2], float("inf")))
    keeper.offer(20, {1.0: {"accuracy": 0.9}, 0.5: {"accuracy": 0.8}})
    assert saved == [] and keeper.state["widths"] == {} and keeper.state["step"] is None


def test_a_resumed_state_is_continued_not_reset(tmp_path):
    keeper, _, saved = make_keeper(tmp_path, "supernet")
    keeper.offer(10, {1.0: {"accuracy": 0.8}})
    resumed = BestKeeper(keeper.ctx, supernet=keeper.supernet, root=keeper.root, entries="widths",
                         name_of=keeper.name_of, save_models=lambda keys: saved.append(keys), state=keeper.state)
    resumed.offer(20, {1.0: {"accuracy": 0.79}})
    assert resumed.state["step"] == 10 and len(saved) == 1


def test_sub_models_still_rising_at_the_last_evaluation_are_named(tmp_path):
    keeper, _, _ = make_keeper(tmp_path, "supernet")
    keeper.offer(10, {1.0: {"accuracy": 0.8}, 0.25: {"accuracy": 0.6}})
    assert keeper.still_rising() == []  # one evaluation says nothing about a trend
    keeper.offer(20, {1.0: {"accuracy": 0.9}, 0.25: {"accuracy": 0.65}})
    keeper.offer(30, {1.0: {"accuracy": 0.85}, 0.25: {"accuracy": 0.7}})  # width 1 flattened, 0.25 still rising
    assert keeper.still_rising() == [("0.25", 0.65, 0.7)]
    assert keeper.state["recent"] == {"1": [0.9, 0.85], "0.25": [0.65, 0.7]}  # in the checkpointed state
