"""Defects 14 and 15 (docs/upstream-defects.md): what makes a CPU step slow without changing its numbers.

Pinned by behaviour, never by time: each upstream test fails once Paddle stops doing what the workaround
answers, each workaround test fails if the workaround stops working or changes a result."""
import contextlib

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from dynabert.model import compat
from dynabert.model.outputs import HiddenStates, PaddingGradients, forward
from dynabert.model.pretrained import tiny_bert
from dynabert.model.supernet import Supernet
from dynabert.train.losses import task_loss
from dynabert.train.step import supernet_step


@pytest.fixture
def stride_flag():
    """Leave the process-wide flag as the test found it."""
    before = paddle.get_flags([compat.STRIDE_FLAG])[compat.STRIDE_FLAG]
    yield
    paddle.set_flags({compat.STRIDE_FLAG: before})


def padded_batch(rows=4, length=12, seed=0):
    rng = np.random.RandomState(seed)
    lengths = [length, 7, 5, 3][:rows]
    ids = np.zeros((rows, length), "int64")
    mask = np.zeros((rows, length), "float32")
    for r, n in enumerate(lengths):
        ids[r, :n] = rng.randint(5, 64, size=n)
        mask[r, :n] = 1
    return {"input_ids": paddle.to_tensor(ids), "token_type_ids": paddle.zeros([rows, length], "int64"),
            "attention_mask": paddle.to_tensor(mask), "labels": paddle.to_tensor(rng.randint(0, 2, rows))}


def block_output_gradients(model, batch, padding=None):
    """The gradients of the task loss at the embeddings' and every block's output, and the parameters'."""
    states = HiddenStates(model)
    grads = []
    with padding.of(batch) if padding else contextlib.nullcontext():
        logits = forward(model, batch)
    for h in states.take():
        h.register_hook(lambda g: grads.append(g.numpy().copy()))
    task_loss(logits, batch["labels"], regression=False).backward()
    params = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
    model.clear_gradients()
    states.remove()
    return grads, params


# ---- defect 14: the softmax leak and PaddingGradients ------------------------------------------------
def test_upstream_cpu_softmax_still_gives_masked_keys_a_positive_probability():
    """Fails once Paddle's CPU softmax returns 0 for a -1e4 (or -inf) key: PaddingGradients can then go."""
    paddle.set_device("cpu")
    probs = F.softmax(paddle.to_tensor([[1.0, 2.0, -1e4, -float("inf")]]), axis=-1).numpy()[0]
    assert probs[2] > 0 and probs[3] > 0
    assert probs[2] < 1e-20  # what leaks is tiny: it only ever matters as denormal arithmetic


def test_padding_positions_get_exactly_zero_gradient_and_nothing_else_changes():
    paddle.set_device("cpu")
    model = tiny_bert(seed=1)
    model.eval()  # no dropout: both passes see the same computation
    batch = padded_batch()
    pad = batch["attention_mask"].numpy() == 0
    leaked, params_leaked = block_output_gradients(model, batch)
    guard = PaddingGradients(model)
    guarded, params_guarded = block_output_gradients(model, batch, guard)
    guard.remove()
    # upstream: some padding position of some block output carries a (tiny) gradient
    assert max(np.abs(g[pad]).max() for g in leaked[1:]) > 0
    for g_leak, g_guard in zip(leaked, guarded):
        assert np.all(g_guard[pad] == 0)
        np.testing.assert_allclose(g_guard[~pad], g_leak[~pad], rtol=1e-6, atol=1e-12)
    assert params_leaked.keys() == params_guarded.keys()
    for name in params_leaked:
        np.testing.assert_allclose(params_guarded[name], params_leaked[name], rtol=1e-5, atol=1e-9, err_msg=name)


def _pad_row_gradient(padding: bool):
    """supernet_step over two widths; the word-embedding gradient of the padding id (0), which only padding
    positions use, and every parameter's gradient."""
    teacher = tiny_bert(seed=2)
    teacher.eval()
    supernet = Supernet(teacher, (1.0, 0.5))
    supernet.eval()
    batch = padded_batch(seed=3)
    supernet_step(supernet, HiddenStates(supernet.model), teacher, HiddenStates(teacher), batch, supernet.widths,
                  0.1, 0.1, False, padding=PaddingGradients(supernet.model) if padding else None)
    grads = {n: p.grad.numpy().copy() for n, p in supernet.model.named_parameters() if p.grad is not None}
    word = next(n for n in grads if "word_embeddings" in n)
    return grads[word][0], grads


def test_supernet_step_with_padding_gradients_leaves_the_padding_id_untrained():
    paddle.set_device("cpu")
    leaked_row, leaked = _pad_row_gradient(padding=False)
    guarded_row, guarded = _pad_row_gradient(padding=True)
    assert np.abs(leaked_row).max() > 0  # upstream: the leak reaches the padding id's embedding
    assert np.all(guarded_row == 0)
    for name in leaked:
        np.testing.assert_allclose(guarded[name], leaked[name], rtol=1e-5, atol=1e-9, err_msg=name)


# ---- defect 15: stride kernels ----------------------------------------------------------------------
def test_upstream_transpose_still_returns_a_strided_view(stride_flag):
    """Fails once Paddle's default transpose writes a contiguous tensor: the flag can then go."""
    paddle.set_device("cpu")
    paddle.set_flags({compat.STRIDE_FLAG: True})
    assert not paddle.rand([2, 3, 4]).transpose([0, 2, 1]).is_contiguous()


def test_contiguous_views_on_cpu_sets_the_flag_unless_the_user_did(stride_flag, monkeypatch):
    paddle.set_device("cpu")
    paddle.set_flags({compat.STRIDE_FLAG: True})
    monkeypatch.setenv(compat.STRIDE_FLAG, "1")
    assert compat.contiguous_views_on_cpu() is False
    assert paddle.get_flags([compat.STRIDE_FLAG])[compat.STRIDE_FLAG] is True
    monkeypatch.delenv(compat.STRIDE_FLAG)
    assert compat.contiguous_views_on_cpu() is True
    assert paddle.rand([2, 3, 4]).transpose([0, 2, 1]).is_contiguous()


def test_contiguous_views_change_no_number(stride_flag):
    """Forward, backward and one AdamW update of a supernet width: bitwise equal with the flag on and off."""
    paddle.set_device("cpu")
    batch = padded_batch(seed=4)
    results = []
    for flag in (True, False):
        paddle.set_flags({compat.STRIDE_FLAG: flag})
        supernet = Supernet(tiny_bert(seed=5), (1.0, 0.5))
        supernet.eval()
        supernet.set_width(0.5)
        opt = paddle.optimizer.AdamW(learning_rate=1e-3, parameters=supernet.parameters())
        loss = task_loss(forward(supernet, batch), batch["labels"], regression=False)
        loss.backward()
        opt.step()
        results.append([float(loss)] + [p.numpy().copy() for p in supernet.parameters()])
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1:], results[1][1:]):
        assert np.array_equal(a, b)


def test_launcher_process_set_up_turns_stride_kernels_off_on_cpu(stride_flag, monkeypatch):
    from launcher.fleet_setup import init_collectives

    monkeypatch.delenv(compat.STRIDE_FLAG, raising=False)
    for var in ("PADDLE_TRAINERS_NUM", "PADDLE_TRAINER_ENDPOINTS"):
        monkeypatch.delenv(var, raising=False)
    paddle.set_flags({compat.STRIDE_FLAG: True})
    init_collectives()
    assert paddle.get_flags([compat.STRIDE_FLAG])[compat.STRIDE_FLAG] is False
