"""Rank 0 decides and everyone follows: ``Collectives.decide`` / ``broadcast_state`` /
``check_agreement`` on a scripted two-rank group (the real 2-process paths run in the dist tests)."""
import numpy as np
import paddle
import pytest

from dynabert.collectives import Collectives
from dynabert.errors import TrainingDiverged, UserError


class Scripted(Collectives):
    """Rank ``rank`` of a 2-rank group whose peers' contributions are given."""

    def __init__(self, rank, peer_objects=None, broadcast_from_main=None):
        self.rank, self.world_size = rank, 2
        self.peer_objects = peer_objects or []
        self.broadcast_from_main = broadcast_from_main  # what rank 0 sends, as seen by rank 1
        self.sent = []

    def run_on_main(self, fn):
        return fn() if self.rank == 0 else None

    def broadcast_object(self, obj, src=0):
        if self.rank == src:
            self.sent.append(obj)
            return obj
        return self.broadcast_from_main.pop(0)

    def broadcast_parameters(self, params, src=0):
        if self.rank != src:
            for p, value in zip(params, self.broadcast_from_main.pop(0)):
                p.set_value(value)

    def all_gather_object(self, obj):
        return [obj, *self.peer_objects] if self.rank == 0 else [*self.peer_objects, obj]


def test_decide_runs_on_rank0_and_returns_its_result_everywhere():
    main = Scripted(0)
    assert main.decide(lambda: {"step": 12}) == {"step": 12}
    follower = Scripted(1, broadcast_from_main=list(main.sent))
    assert follower.decide(lambda: pytest.fail("only rank 0 decides")) == {"step": 12}


@pytest.mark.parametrize("error", [UserError, TrainingDiverged])
def test_an_error_on_rank0_is_raised_on_every_rank(error):
    def fails():
        raise error("run.out_dir: cannot resume from x")

    main = Scripted(0)
    with pytest.raises(error, match="cannot resume from x"):
        main.decide(fails)
    follower = Scripted(1, broadcast_from_main=list(main.sent))
    with pytest.raises(error, match="cannot resume from x"):
        follower.decide(fails)


def test_broadcast_state_rebuilds_rank0s_nested_arrays():
    state = {"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "optimizer": {
        "m": np.ones(4, np.float32), "LR_Scheduler": {"last_epoch": 7, "last_lr": 1e-4}}, "arrays": {}}
    main = Scripted(0)
    assert main.broadcast_state(state) is not None
    skeleton = main.sent[0]
    assert skeleton["optimizer"]["LR_Scheduler"] == {"last_epoch": 7, "last_lr": 1e-4}
    arrays = [state["model"]["w"], state["optimizer"]["m"]]
    follower = Scripted(1, broadcast_from_main=[skeleton, arrays])
    got = follower.broadcast_state(None)
    np.testing.assert_array_equal(got["model"]["w"], state["model"]["w"])
    np.testing.assert_array_equal(got["optimizer"]["m"], state["optimizer"]["m"])
    assert got["optimizer"]["LR_Scheduler"]["last_epoch"] == 7 and got["arrays"] == {}
    assert isinstance(got["model"]["w"], np.ndarray) and not isinstance(got["model"]["w"], paddle.Tensor)


def test_disagreement_stops_naming_ranks_and_what_differs():
    facts = {"config": "abc", "data": "d1", "--resume": "auto"}
    Scripted(0, peer_objects=[dict(facts)]).check_agreement(facts)  # agree: nothing happens
    other = {**facts, "data": "d2"}
    with pytest.raises(UserError, match=r"ranks disagree on data \(rank 0: 'd1', rank 1: 'd2'\)"):
        Scripted(0, peer_objects=[other]).check_agreement(facts)
    with pytest.raises(UserError, match=r"ranks disagree on data"):
        Scripted(1, peer_objects=[facts]).check_agreement(other)  # the same verdict on the other rank
