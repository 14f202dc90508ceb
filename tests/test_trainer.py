"""The loop's step pieces: the skip policy (fp32 stop/skip, fp16's normal overflow skips and the
consecutive limit), a skipped step holding the learning-rate schedule, host syncs per step, and
deterministic fault injection's parsing."""
import numpy as np
import paddle
import pytest

from dynabert import faults
from dynabert.collectives import SingleProcess
from dynabert.config import OptimConfig
from dynabert.data.batching import GlobalBatches
from dynabert.data.features import Feature
from dynabert.errors import TrainingDiverged, UserError
from dynabert.model.pretrained import tiny_bert
from dynabert.train.loop import LoopSettings, Optimization, SkipPolicy, train
from dynabert.train.precision import Precision, check_bf16_capability
from dynabert.train.run_log import RunLog
from dynabert.train.step import finetune_step

FEATURES = [Feature([2, 5 + i % 7, 3], [0, 0, 0], i % 2) for i in range(64)]


def test_fp32_stop_raises_at_once_naming_the_step():
    policy = SkipPolicy(on_nonfinite="stop", overflow_is_normal=False, max_consecutive=5, tag="t")
    policy.record(True, 1)
    with pytest.raises(TrainingDiverged, match="t: non-finite loss or gradient at step 2") as e:
        policy.record(False, 2)
    assert e.value.exit_code == 3


def test_fp16_overflow_skips_are_normal_until_the_scale_collapses():
    """With loss scaling a skipped step is how the scale is found: on_nonfinite=stop must not stop at the
    first one, but a run that skips max_consecutive steps in a row has diverged (exit 3)."""
    policy = SkipPolicy(on_nonfinite="stop", overflow_is_normal=True, max_consecutive=3, tag="compress")
    for step, finite in enumerate([False, False, True, False, False], start=1):
        policy.record(finite, step)       # two in a row, a good step resets the count, two again
    assert policy.total == 4 and policy.consecutive == 2
    with pytest.raises(TrainingDiverged, match="compress: 3 consecutive steps .* up to step 6") as e:
        policy.record(False, 6)
    assert e.value.exit_code == 3


def test_skip_mode_also_stops_after_the_consecutive_limit():
    policy = SkipPolicy(on_nonfinite="skip", overflow_is_normal=False, max_consecutive=2, tag="t")
    policy.record(False, 1)
    with pytest.raises(TrainingDiverged, match="2 consecutive steps"):
        policy.record(False, 2)


def _optimization(model):
    return Optimization(list(model.named_parameters()), OptimConfig(learning_rate=1e-3, warmup_ratio=0.0), 10,
                        SingleProcess(), Precision("fp32"))


def _backward(model, poison=False):
    batch = GlobalBatches(FEATURES, 16, seed=0, rank=0, world_size=1, pad_token_id=0)
    first = next(batch.epoch(0))
    loss = finetune_step(model, {k: paddle.to_tensor(v) for k, v in first.items()}, regression=False)["loss"]
    if poison:
        with paddle.no_grad():
            model.classifier.weight.grad[0, 0] = float("nan")
    return loss


def test_a_skipped_step_holds_the_schedule_and_leaves_the_weights():
    model = tiny_bert()
    opt = _optimization(model)
    _backward(model)
    assert opt.apply(opt.reduce()) and opt.schedule.last_epoch == 1
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    lr = opt.optimizer.get_lr()
    _backward(model, poison=True)
    assert not opt.apply(opt.reduce())
    assert opt.schedule.last_epoch == 1 and opt.optimizer.get_lr() == lr
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k], err_msg=k)
    assert all(p.grad is None or not np.any(p.grad.numpy()) for p in model.parameters())  # cleared


def test_one_host_sync_per_step_outside_logging_steps(monkeypatch):
    """Every conversion of a tensor to a host value drains a GPU's queue. The loop makes one per step
    (the finiteness verdict) and converts losses only on logging steps."""
    model = tiny_bert()  # (its initialisation syncs; not part of the loop)
    model.train()
    calls = {"n": 0, "depth": 0}
    for name in ("numpy", "item", "__float__", "__bool__", "__int__", "tolist"):
        original = getattr(paddle.Tensor, name)

        def counting(self, *a, _original=original, **k):
            calls["n"] += calls["depth"] == 0  # __bool__ calls numpy inside: one sync, counted once
            calls["depth"] += 1
            try:
                return _original(self, *a, **k)
            finally:
                calls["depth"] -= 1

        monkeypatch.setattr(paddle.Tensor, name, counting)
    batches = GlobalBatches(FEATURES, 16, seed=0, rank=0, world_size=1, pad_token_id=0)
    result = train(lambda b, step: finetune_step(model, b, regression=False),
                   named_params=list(model.named_parameters()),
                   optim=OptimConfig(epochs=1, batch_size=16, learning_rate=1e-3), batches=batches,
                   comms=SingleProcess(), log=RunLog("", enabled=False),
                   settings=LoopSettings(tag="t", seed=0, log_every=100, show_progress=False))
    assert result.steps == 4 and len(result.losses) == 1  # only the last step logs
    assert calls["n"] == 4 + 1  # one verdict per step + one stacked loss conversion at the logging step


def test_bf16_needs_compute_capability_8():
    check_bf16_capability((8, 0))
    with pytest.raises(UserError, match="run.precision: bf16 needs a GPU of compute capability 8.0 .* 7.5"):
        check_bf16_capability((7, 5))


def test_fault_spec_parsing(tmp_path, monkeypatch):
    assert faults.parse_all(f"rank=1,step=13,once={tmp_path / 'f'}") == [
        faults.Fault(rank=1, step=13, once=str(tmp_path / "f"))]
    both = faults.parse_all("rank=0,stage=compress,point=checkpoint_write,step=6;"
                            "rank=1,stage=export,point=model,step=2")
    assert both == [faults.Fault(rank=0, step=6, stage="compress", point="checkpoint_write"),
                    faults.Fault(rank=1, step=2, stage="export", point="model")]
    assert both[0].matches("checkpoint_write", "compress", 6) and not both[0].matches("checkpoint_write", "finetune", 6)
    assert not both[0].matches("step", "compress", 6) and not both[0].matches("checkpoint_write", "compress", 7)
    assert faults.Fault(rank=0, step=3).matches("step", "finetune", 3)  # no stage: whichever reaches it
    monkeypatch.setenv(faults.ENV, f"rank=1,step=13,once={tmp_path / 'f'}")
    (tmp_path / "f").write_text("fired")
    faults.fire("step", stage="compress", rank=1, step=13)  # already fired once: no effect (still alive)
    faults.fire("step", stage="compress", rank=0, step=13)  # another rank's fault
    for bad in ("rank=1", "rank=x,step=2", "rank=1,step=2,when=now", "rank=1,point=step", "rank=1,point=later"):
        monkeypatch.setenv(faults.ENV, bad)
        with pytest.raises(UserError, match=faults.ENV):
            faults.fire("stage_done", stage="compress", rank=0)


def test_optimizer_state_resumes_in_a_process_whose_parameters_have_other_names():
    """Parameter names come from process-global counters: a restarted process that skips a stage builds
    the same supernet as ``super_embedding_0`` instead of ``super_embedding_1``. The checkpointed
    optimizer state must still resume it (it failed with 'Optimizer set error, ... should in state dict')."""
    from dynabert.model.pretrained import tiny_bert
    from dynabert.model.supernet import Supernet

    def built():
        sn = Supernet(tiny_bert(seed=0), (1.0, 0.5))
        opt = Optimization(list(sn.model.named_parameters()), OptimConfig(learning_rate=1e-2, warmup_ratio=0.0),
                           10, SingleProcess(), Precision("fp32"))
        return sn, opt

    def step(sn, opt, seed):
        rng = np.random.RandomState(seed)
        ids = paddle.to_tensor(rng.randint(5, 60, size=(4, 6)).astype("int64"))
        zeros, mask = paddle.zeros_like(ids), paddle.ones([4, 6], dtype="float32")
        paddle.seed(seed)  # the same dropout masks in both models
        for width in (1.0, 0.5):
            sn.set_width(width)
            sn(ids, zeros, mask).sum().backward()
        assert opt.apply(opt.reduce())

    first, opt1 = built()
    step(first, opt1, 0)
    # Host copies, as a checkpoint holds them (the live tensors change with the next step).
    state = {k: v.numpy() if isinstance(v, paddle.Tensor) else v for k, v in opt1.state_dict().items()}
    weights = {k: v.numpy() for k, v in first.state_dict().items()}
    second, opt2 = built()  # the same model, built later in this process: other parameter names
    assert [p.name for p in second.parameters()] != [p.name for p in first.parameters()]
    second.set_state_dict(weights)
    opt2.load_state_dict(state)
    step(first, opt1, 1)
    step(second, opt2, 1)  # with the moments restored, the second update is the first one's exactly
    for (name, a), b in zip(first.model.named_parameters(), second.parameters()):
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=name)


def test_a_checkpoint_at_an_epochs_last_step_holds_that_epochs_evaluation(tmp_path):
    """With eval_every 0 the evaluation closes each epoch. A checkpoint taken at the epoch's last step
    must come after it, or a run resumed from that checkpoint skips it and may keep another best."""
    from dynabert.train.checkpoint import Checkpointer, latest_checkpoint
    from dynabert.train.loop import LoopHooks, Resume

    def run(evaluated, resume=None):
        model = tiny_bert(seed=0)
        saver = Checkpointer(str(tmp_path), every_steps=4, every_minutes=0, keep=5, is_main=True, fingerprint={})
        hooks = LoopHooks(evaluate=evaluated.append, checkpointer=saver,
                          checkpoint_state=lambda: {"evaluated": list(evaluated)})
        batches = GlobalBatches(FEATURES, 16, seed=0, rank=0, world_size=1, pad_token_id=0)  # 4 steps an epoch
        train(lambda b, step: finetune_step(model, b, regression=False), named_params=list(model.named_parameters()),
              optim=OptimConfig(epochs=2, batch_size=16, learning_rate=1e-3, eval_every=0), batches=batches,
              comms=SingleProcess(), log=RunLog("", enabled=False), hooks=hooks, resume=resume,
              settings=LoopSettings(tag="t", seed=0, log_every=100, show_progress=False))

    straight = []
    run(straight)
    assert straight == [4, 8]
    checkpoint = latest_checkpoint(str(tmp_path), lambda _: None)
    assert checkpoint.position.step == 4 and checkpoint.position.step_in_epoch == 4
    assert checkpoint.extra["evaluated"] == [4]  # taken after the epoch's evaluation, not before it
    resumed = list(checkpoint.extra["evaluated"])
    run(resumed, Resume(checkpoint.position, checkpoint.optimizer_state()))
    assert resumed == straight  # every evaluation once, none skipped, none repeated
