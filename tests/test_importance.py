"""Tests for dynabert.model.importance and dynabert.model.reorder.

Importance is checked against derivatives obtained independently, by central finite differences of the
float64 NumPy reference (tests/reference_bert.py) with a mean cross-entropy loss:

* head h of layer l: d loss / d m[l, h], where m multiplies that head's attention probabilities;
* FFN neuron j: sum_i W1[i,j] dW1[i,j] + b1[j] db1[j] is the derivative of the loss with respect to
  scaling column j of W1 and b1[j] by (1 + a) at a = 0, and sum_k W2[j,k] dW2[j,k] the derivative with
  respect to scaling row j of W2 by (1 + b) at b = 0. Both are finite differences of the reference.
"""
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from dynabert.model.importance import compute_importance
from dynabert.model.pretrained import tiny_bert
from dynabert.model.reorder import importance_order, reorder_heads_and_neurons
from tests.reference_bert import cross_entropy, model_weights, numpy_bert_logits, random_batch

EPS = 1e-4


def to_tensors(batch):
    return {k: paddle.to_tensor(v) for k, v in batch.items()}


def ref_loss(weights, config, batch, head_mask=None):
    logits = numpy_bert_logits(weights, config, batch["input_ids"], batch["token_type_ids"],
                               batch["attention_mask"], head_mask=head_mask)
    return cross_entropy(logits, batch["labels"])


def fd_head_grad(weights, config, batch, layer, head):
    mask = np.ones((config.num_hidden_layers, config.num_attention_heads))
    mask[layer, head] += EPS
    plus = ref_loss(weights, config, batch, mask)
    mask[layer, head] -= 2 * EPS
    minus = ref_loss(weights, config, batch, mask)
    return (plus - minus) / (2 * EPS)


def fd_scale_grad(weights, config, batch, scaled):
    """d loss / d a of scaling the (name, index) slices in ``scaled`` by (1 + a), at a = 0."""
    def at(a):
        w = dict(weights)
        for name, index in scaled:
            w[name] = w[name].copy()
            w[name][index] *= 1 + a
        return ref_loss(w, config, batch)
    return (at(EPS) - at(-EPS)) / (2 * EPS)


@pytest.fixture(scope="module")
def batches():
    return [random_batch(seed, b=4, t=8, padded_rows={1: -2, 3: 4}) for seed in (1, 2)]


@pytest.fixture(scope="module")
def importance(batches):
    model = tiny_bert(seed=0)
    model.train()  # compute_importance must switch dropout off itself and restore the mode
    heads, neurons = compute_importance(model, [to_tensors(b) for b in batches], F.cross_entropy)
    assert model.training
    return model, heads, neurons


def test_importance_shapes(importance):
    _, heads, neurons = importance
    assert heads.shape == (2, 4) and neurons.shape == (2, 64)
    assert heads.dtype == np.float64 and neurons.dtype == np.float64


def test_head_importance_is_abs_gradient_of_head_mask(importance, batches):
    model, heads, _ = importance
    weights = model_weights(model)
    per_batch = np.array([[[fd_head_grad(weights, model.config, b, layer, h) for h in range(4)] for layer in range(2)]
                          for b in batches])  # [batch, layer, head]
    expected = np.abs(per_batch).sum(axis=0)
    assert expected.min() > 1e-2  # gradients are far from tiny, so the relative check means something
    # float32 Paddle vs float64 finite differences (measured agreement ~1e-6 relative)
    np.testing.assert_allclose(heads, expected, rtol=1e-4, atol=1e-7)
    # the data makes |g1| + |g2| differ from |g1 + g2| for some head, so summing the absolute value per
    # batch (not the absolute value of the summed gradient) is what is being checked
    assert np.abs(np.abs(per_batch.sum(axis=0)) - expected).max() > 1e-3


@pytest.mark.parametrize("layer,neuron", [(0, 0), (0, 4), (1, 4), (1, 37), (0, 63)])
def test_neuron_importance_formula(importance, batches, layer, neuron):
    model, _, neurons = importance
    weights = model_weights(model)
    p = f"bert.encoder.layers.{layer}."
    expected = 0.0
    for b in batches:
        first = fd_scale_grad(weights, model.config, b,
                              [(p + "linear1.weight", (slice(None), neuron)), (p + "linear1.bias", neuron)])
        second = fd_scale_grad(weights, model.config, b, [(p + "linear2.weight", (neuron, slice(None)))])
        expected += abs(first) + abs(second)
    assert expected > 1e-3
    # measured agreement ~1e-6 relative; 1e-4 still tells |W1.dW1 + b1.db1| from |W1.dW1| + |b1.db1| (~1e-3 at (0, 4))
    np.testing.assert_allclose(neurons[layer, neuron], expected, rtol=1e-4, atol=1e-7)


def test_no_stale_gradients_or_hooks_after_importance(batches):
    model = tiny_bert(seed=0)
    b = to_tensors(batches[0])

    def logits():
        with paddle.no_grad():
            return model(b["input_ids"], token_type_ids=b["token_type_ids"],
                         attention_mask=b["attention_mask"]).numpy()

    model.eval()
    before = logits()
    compute_importance(model, [to_tensors(x) for x in batches], F.cross_entropy)
    for name, p in model.named_parameters():
        assert p.grad is None or not np.any(p.grad.numpy()), name
    np.testing.assert_array_equal(logits(), before)  # the head-mask hooks are gone

    # the first training step's gradient is that batch's gradient alone (defect 7, docs/upstream-defects.md)
    fresh = tiny_bert(seed=0)
    fresh.eval()
    for m in (model, fresh):
        F.cross_entropy(m(b["input_ids"], token_type_ids=b["token_type_ids"],
                          attention_mask=b["attention_mask"]), b["labels"]).backward()
    for (name, p), q in zip(model.named_parameters(), fresh.parameters()):
        np.testing.assert_array_equal(p.grad.numpy(), q.grad.numpy(), err_msg=name)


# --------------------------------------------------------------------------------------------------
# reorder
# --------------------------------------------------------------------------------------------------


def test_importance_order_is_stable():
    np.testing.assert_array_equal(importance_order([0.1, 0.5, 0.3, 0.5]), [1, 3, 2, 0])
    np.testing.assert_array_equal(importance_order([0.0, 0.0, 0.9, 0.0]), [2, 0, 1, 3])
    np.testing.assert_array_equal(importance_order(np.ones(6)), np.arange(6))


def test_reorder_keeps_logits(batches):
    model = tiny_bert(seed=0)
    b = batches[0]
    rng = np.random.RandomState(7)
    heads, neurons = rng.random_sample((2, 4)), rng.random_sample((2, 64))
    assert not np.array_equal(importance_order(heads[0]), np.arange(4))
    before_w = model_weights(model)
    expected = numpy_bert_logits(before_w, model.config, b["input_ids"], b["token_type_ids"], b["attention_mask"])
    reorder_heads_and_neurons(model, heads, neurons)
    with paddle.no_grad():
        got = model(paddle.to_tensor(b["input_ids"]), token_type_ids=paddle.to_tensor(b["token_type_ids"]),
                    attention_mask=paddle.to_tensor(b["attention_mask"])).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    after_w = model_weights(model)
    assert not np.array_equal(after_w["bert.encoder.layers.0.self_attn.q_proj.weight"],
                              before_w["bert.encoder.layers.0.self_attn.q_proj.weight"])
    # and a narrow sub-model now is a different one (the reorder chose which heads it keeps)
    narrow = dict(heads_kept=1, ffn_kept=16)
    assert np.abs(numpy_bert_logits(after_w, model.config, b["input_ids"], b["token_type_ids"],
                                    b["attention_mask"], **narrow)
                  - numpy_bert_logits(before_w, model.config, b["input_ids"], b["token_type_ids"],
                                      b["attention_mask"], **narrow)).max() > 1e-3


def test_reorder_moves_important_heads_and_neurons_first():
    model = tiny_bert(seed=0)
    w = model_weights(model)
    heads = np.array([[0.1, 0.5, 0.3, 0.5],     # order 1, 3, 2, 0 (tie: 1 before 3)
                      [0.0, 0.0, 0.9, 0.0]])    # order 2, 0, 1, 3
    neurons = np.zeros((2, 64))
    neurons[0] = np.arange(64)                  # reversed
    neurons[1, 20] = neurons[1, 10] = 1.0       # 10, 20, then the rest in their original order
    head_orders = [[1, 3, 2, 0], [2, 0, 1, 3]]
    neuron_orders = [list(range(63, -1, -1)), [10, 20] + [j for j in range(64) if j not in (10, 20)]]
    reorder_heads_and_neurons(model, heads, neurons)
    got = model_weights(model)
    d = 4
    for i in range(2):
        p = f"bert.encoder.layers.{i}."
        cols = np.concatenate([np.arange(h * d, (h + 1) * d) for h in head_orders[i]])
        for proj in ("q_proj", "k_proj", "v_proj"):
            name = p + f"self_attn.{proj}"
            np.testing.assert_array_equal(got[name + ".weight"], w[name + ".weight"][:, cols])
            np.testing.assert_array_equal(got[name + ".bias"], w[name + ".bias"][cols])
        np.testing.assert_array_equal(got[p + "self_attn.out_proj.weight"], w[p + "self_attn.out_proj.weight"][cols])
        n = neuron_orders[i]
        np.testing.assert_array_equal(got[p + "linear1.weight"], w[p + "linear1.weight"][:, n])
        np.testing.assert_array_equal(got[p + "linear1.bias"], w[p + "linear1.bias"][n])
        np.testing.assert_array_equal(got[p + "linear2.weight"], w[p + "linear2.weight"][n])
    # the most important head of layer 0 (head 1) is now head 0: its query columns come first
    np.testing.assert_array_equal(got["bert.encoder.layers.0.self_attn.q_proj.weight"][:, :4],
                                  w["bert.encoder.layers.0.self_attn.q_proj.weight"][:, 4:8])
    # everything that is not permuted is untouched
    permuted = ("q_proj.", "k_proj.", "v_proj.", "out_proj.weight", "linear1.", "linear2.weight")
    for name in w:
        if not any(s in name for s in permuted):
            np.testing.assert_array_equal(got[name], w[name], err_msg=name)


def test_reorder_with_ties_keeps_original_order():
    model = tiny_bert(seed=0)
    w = model_weights(model)
    reorder_heads_and_neurons(model, np.full((2, 4), 0.5), np.zeros((2, 64)))
    got = model_weights(model)
    for name in w:
        np.testing.assert_array_equal(got[name], w[name], err_msg=name)
