"""Non-finite losses: every rank reaches the same verdict (the check runs on all-reduced gradients), the
step is skipped or the run stops with exit code 3, and a non-finite model is never kept as best."""
import math

import numpy as np
import paddle
import pytest

from dynabert.collectives import SingleProcess
from dynabert.config import OptimConfig
from dynabert.data.batching import GlobalBatches
from dynabert.data.features import Feature
from dynabert.errors import TrainingDiverged
from dynabert.model.pretrained import tiny_bert
from dynabert.stages.common import improves, is_finite
from dynabert.train.loop import LoopSettings, train
from dynabert.train.run_log import RunLog
from dynabert.train.step import finetune_step

FEATURES = [Feature([2, 5 + i % 7, 3], [0, 0, 0], i % 2) for i in range(64)]


def _run(model, poison_step, on_nonfinite):
    """Train 4 steps; the loss of step ``poison_step`` (1-based) is multiplied by NaN."""
    calls = {"n": 0}

    def step_fn(batch, step):
        calls["n"] += 1
        terms = finetune_step_poisoned(model, batch, poison=calls["n"] == poison_step)
        return terms

    batches = GlobalBatches(FEATURES, 16, seed=0, rank=0, world_size=1, pad_token_id=0)
    return train(step_fn, named_params=list(model.named_parameters()),
                 optim=OptimConfig(epochs=1, batch_size=16, learning_rate=1e-3), batches=batches,
                 comms=SingleProcess(), log=RunLog("", enabled=False),
                 settings=LoopSettings(tag="t", seed=0, log_every=1, show_progress=False, on_nonfinite=on_nonfinite))


def finetune_step_poisoned(model, batch, poison):
    if not poison:
        return finetune_step(model, batch, regression=False)
    from dynabert.model.outputs import forward
    from dynabert.train.losses import task_loss
    loss = task_loss(forward(model, batch), batch["labels"], False) * float("nan")
    loss.backward()
    return {"loss": loss}


def test_stop_raises_exit_code_3():
    model = tiny_bert()
    model.train()
    with pytest.raises(TrainingDiverged, match="non-finite loss or gradient at step 2") as e:
        _run(model, poison_step=2, on_nonfinite="stop")
    assert e.value.exit_code == 3
    assert is_finite(model)  # the poisoned update was never applied


def test_skip_leaves_the_model_finite_and_counts_the_step():
    model = tiny_bert()
    model.train()
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    result = _run(model, poison_step=2, on_nonfinite="skip")
    assert result.skipped_steps == 1 and result.steps == 4
    assert is_finite(model)
    assert any(not np.array_equal(before[k], v.numpy()) for k, v in model.state_dict().items())
    assert math.isnan(result.losses[1]["loss"]) and all(math.isfinite(r["loss"]) for i, r in
                                                        enumerate(result.losses) if i != 1)


def test_non_finite_metrics_or_weights_never_become_best():
    assert not improves({"accuracy": float("nan")}, None, "accuracy")
    assert improves({"accuracy": 0.6}, {"accuracy": 0.5}, "accuracy")
    assert not improves({"accuracy": 0.5}, {"accuracy": 0.5}, "accuracy")
    model = tiny_bert()
    assert is_finite(model)
    with paddle.no_grad():
        model.classifier.weight[0, 0] = float("inf")
    assert not is_finite(model)
