"""Tests for dynabert.train.step.supernet_step and dynabert.train.losses: distillation from a teacher that runs
once per batch into every width of the supernet.

Models are in eval mode (no dropout) so every number is deterministic; gradients flow the same way.
Expected loss values come from the float64 NumPy reference (tests/reference_bert.py), not from the
code under test.
"""
import numpy as np
import paddle
import pytest

from dynabert.model.outputs import HiddenStates
from dynabert.model.pretrained import tiny_bert
from dynabert.model.supernet import Supernet
from dynabert.train.step import supernet_step
from tests.reference_bert import model_weights, numpy_bert_forward, random_batch, softmax

WIDTHS = (1.0, 0.75, 0.5, 0.25)
PROBE = "bert.encoder.layers.0.linear1.fn.weight"


def tensors(batch):
    return {k: paddle.to_tensor(v) for k, v in batch.items()}


def perturb(supernet, seed=0, scale=0.05):
    """Move every student parameter a little (the same way for the same seed)."""
    rng = np.random.RandomState(seed)
    with paddle.no_grad():
        for _name, p in sorted(supernet.model.state_dict().items()):
            p.set_value(p.numpy() + scale * rng.standard_normal(p.shape).astype(np.float32))


class Setup:
    """A supernet (optionally perturbed) with its hidden-state taps. All setups of one teacher share one
    teacher tap: a HiddenStates records every forward of its model, so two taps on the teacher would
    each collect the other's steps."""

    def __init__(self, teacher, teacher_states, perturbed=True, seed=0):
        self.teacher = teacher
        self.supernet = Supernet(teacher, WIDTHS)
        if perturbed:
            perturb(self.supernet, seed)
        self.supernet.eval()
        self.student_states = HiddenStates(self.supernet.model)
        self.teacher_states = teacher_states

    def step(self, batch, widths=WIDTHS, lambda_distill=1.0, lambda_logit=1.0, regression=False):
        return supernet_step(self.supernet, self.student_states, self.teacher, self.teacher_states,
                             tensors(batch), widths, lambda_distill, lambda_logit, regression)

    def grads(self):
        return {name: (np.zeros(p.shape) if p.grad is None else p.grad.numpy().copy())
                for name, p in self.supernet.model.named_parameters()}

    def close(self):
        self.student_states.remove()


@pytest.fixture
def teacher():
    model = tiny_bert(seed=0)
    model.eval()
    return model


@pytest.fixture
def setups(teacher):
    made = []
    teacher_states = HiddenStates(teacher)

    def make(**kwargs):
        s = Setup(teacher, teacher_states, **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()
    teacher_states.remove()


def test_rep_is_zero_only_where_student_equals_teacher(setups):
    batch = random_batch()
    same = setups(perturbed=False).step(batch)
    # the unperturbed student at full width is the teacher: layer-by-layer hidden states line up exactly
    assert float(same[1.0]["rep"]) < 1e-10
    for w in (0.75, 0.5, 0.25):
        assert float(same[w]["rep"]) > 1e-4, w
    moved = setups(perturbed=True).step(batch)
    for w in WIDTHS:
        assert float(moved[w]["rep"]) > 1e-4, w
        assert np.isfinite(float(moved[w]["loss"]))


def test_hidden_state_term_alone_trains_encoder_not_teacher(setups, teacher):
    s = setups()
    losses = s.step(random_batch(), widths=(1.0, 0.5), lambda_distill=1.0, lambda_logit=0.0)
    for w in (1.0, 0.5):
        np.testing.assert_allclose(float(losses[w]["loss"]), float(losses[w]["rep"]), rtol=1e-6)
    grads = s.grads()
    for name in (PROBE, "bert.encoder.layers.1.linear2.fn.weight", "bert.encoder.layers.0.self_attn.q_proj.fn.weight",
                 "bert.embeddings.word_embeddings.fn.weight"):
        assert np.abs(grads[name]).max() > 1e-6, name
    # the logit term is switched off: nothing after the last block gets a gradient
    for name in ("bert.pooler.dense.fn.weight", "classifier.fn.weight"):
        assert not np.any(grads[name]), name
    for name, p in teacher.named_parameters():
        assert p.grad is None or not np.any(p.grad.numpy()), name


def test_teacher_runs_once_per_step(setups, teacher):
    s = setups()
    calls = {"teacher": 0, "student": 0}

    def counter(key):
        def hook(layer, inputs, output):
            calls[key] += 1
        return hook

    hooks = [teacher.register_forward_post_hook(counter("teacher")),
             s.supernet.model.bert.register_forward_post_hook(counter("student"))]  # OFA calls model.forward
    try:
        s.step(random_batch())
        assert calls == {"teacher": 1, "student": len(WIDTHS)}
        s.step(random_batch(seed=2), widths=(1.0, 0.5))
        assert calls == {"teacher": 2, "student": len(WIDTHS) + 2}
    finally:
        for h in hooks:
            h.remove()


def test_labels_only_runs_no_teacher_and_trains_each_width_on_the_labels(setups, teacher):
    """Both distillation weights 0 (DynaBERT's width stage without augmented data): the teacher's forward
    would be wasted, so it does not run; the loss is the weighted cross-entropy alone."""
    batch = random_batch(seed=8)
    s = setups(seed=9)
    student_w = model_weights(s.supernet.model)
    calls = []
    hook = teacher.register_forward_post_hook(lambda layer, inputs, output: calls.append(1))
    try:
        losses = supernet_step(s.supernet, s.student_states, s.teacher, s.teacher_states, tensors(batch), WIDTHS,
                               0.0, 0.0, False, lambda_task=0.6)
    finally:
        hook.remove()
    assert calls == []
    args = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    for w in WIDTHS:
        logits = numpy_bert_forward(student_w, teacher.config, *args, heads_kept=round(w * 4),
                                    ffn_kept=int(w * 64))["logits"]
        z = logits - logits.max(-1, keepdims=True)
        ce = float(-(z - np.log(np.exp(z).sum(-1, keepdims=True)))[np.arange(len(batch["labels"])),
                                                                     batch["labels"]].mean())
        assert sorted(losses[w]) == ["loss", "task"]
        np.testing.assert_allclose(float(losses[w]["loss"]), 0.6 * ce, rtol=1e-4, err_msg=str(w))
    s.step(random_batch(seed=10))  # the student's hidden-state tap was emptied: distillation still works after


def test_gradients_of_all_widths_accumulate(setups):
    batch = random_batch()
    both, full, half = setups(seed=3), setups(seed=3), setups(seed=3)
    both.step(batch, widths=(1.0, 0.5), lambda_distill=2.0)
    full.step(batch, widths=(1.0,), lambda_distill=2.0)
    half.step(batch, widths=(0.5,), lambda_distill=2.0)
    g_both, g_full, g_half = both.grads(), full.grads(), half.grads()
    assert np.abs(g_half[PROBE]).max() > 1e-6 and np.abs(g_full[PROBE]).max() > 1e-6
    # width 0.5 touches only the first 32 FFN neurons; width 1.0 all of them
    assert not np.any(g_half[PROBE][:, 32:])
    for name in g_both:
        np.testing.assert_allclose(g_both[name], g_full[name] + g_half[name], rtol=0, atol=1e-6, err_msg=name)


def _soft_ce(student_logits, teacher_logits):
    z = student_logits - student_logits.max(-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-(softmax(teacher_logits) * log_probs).sum(-1).mean())


@pytest.mark.parametrize("lambda_distill,lambda_logit", [(1.0, 1.0), (0.7, 2.5)])
def test_loss_terms_equal_hand_computation(setups, teacher, lambda_distill, lambda_logit):
    batch = random_batch()
    s = setups(seed=5)
    student_w, teacher_w = model_weights(s.supernet.model), model_weights(teacher)
    losses = s.step(batch, lambda_distill=lambda_distill, lambda_logit=lambda_logit)
    args = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    ref_teacher = numpy_bert_forward(teacher_w, teacher.config, *args)
    for w in WIDTHS:
        ref_student = numpy_bert_forward(student_w, teacher.config, *args,
                                         heads_kept=round(w * 4), ffn_kept=int(w * 64))
        pairs = list(zip(ref_student["hidden_states"], ref_teacher["hidden_states"]))
        assert len(pairs) == 3  # embeddings + 2 blocks
        mask = batch["attention_mask"][..., None]  # real tokens only: [b, t, 1]
        rep = lambda_distill * sum(float(((hs - ht) ** 2 * mask).sum() / (mask.sum() * hs.shape[-1]))
                                   for hs, ht in pairs)
        logit = _soft_ce(ref_student["logits"], ref_teacher["logits"])
        np.testing.assert_allclose(float(losses[w]["rep"]), rep, rtol=1e-4, err_msg=str(w))
        np.testing.assert_allclose(float(losses[w]["logit"]), logit, rtol=1e-4, err_msg=str(w))
        np.testing.assert_allclose(float(losses[w]["loss"]), rep + lambda_logit * logit, rtol=1e-4, err_msg=str(w))
        assert losses[w]["loss"].stop_gradient  # returned values are detached


def test_task_term_is_the_cross_entropy_on_the_labels_weighted(setups, teacher):
    """compress.lambda_task: every width also learns the true labels; off (no "task" term) by default."""
    batch = random_batch(seed=6)
    s = setups(seed=7)
    student_w = model_weights(s.supernet.model)
    assert "task" not in s.step(batch)[1.0]
    losses = supernet_step(s.supernet, s.student_states, s.teacher, s.teacher_states, tensors(batch), WIDTHS,
                           0.7, 2.5, False, lambda_task=0.3)
    args = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    for w in WIDTHS:
        logits = numpy_bert_forward(student_w, teacher.config, *args, heads_kept=round(w * 4),
                                    ffn_kept=int(w * 64))["logits"]
        z = logits - logits.max(-1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
        ce = float(-log_probs[np.arange(len(batch["labels"])), batch["labels"]].mean())
        np.testing.assert_allclose(float(losses[w]["task"]), ce, rtol=1e-4, err_msg=str(w))
        np.testing.assert_allclose(float(losses[w]["loss"]),
                                   float(losses[w]["rep"]) + 2.5 * float(losses[w]["logit"]) + 0.3 * ce,
                                   rtol=1e-4, err_msg=str(w))


def test_regression_logit_term_is_mse():
    teacher = tiny_bert(num_classes=1, seed=0)
    teacher.eval()
    teacher_states = HiddenStates(teacher)
    s = Setup(teacher, teacher_states, seed=6)
    try:
        batch = random_batch()
        losses = s.step(batch, widths=(1.0, 0.5), regression=True)
        student_w, teacher_w = model_weights(s.supernet.model), model_weights(teacher)
        args = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        t_logits = numpy_bert_forward(teacher_w, teacher.config, *args)["logits"]
        for w in (1.0, 0.5):
            s_logits = numpy_bert_forward(student_w, teacher.config, *args, heads_kept=round(w * 4),
                                          ffn_kept=int(w * 64))["logits"]
            np.testing.assert_allclose(float(losses[w]["logit"]), float(np.mean((s_logits - t_logits) ** 2)),
                                       rtol=1e-4)
    finally:
        s.close()
        teacher_states.remove()


def _pad_to(batch, length, pad_id=0):
    """The same rows padded with ``length - t`` more pad positions."""
    b, t = batch["input_ids"].shape
    out = dict(batch)
    out["input_ids"] = np.full((b, length), pad_id, np.int64)
    out["token_type_ids"] = np.zeros((b, length), np.int64)
    out["attention_mask"] = np.zeros((b, length), np.float32)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        out[key][:, :t] = batch[key] * (batch["attention_mask"] if key != "attention_mask" else 1)
    return out


def test_distillation_ignores_padding(setups):
    """The loss and the gradients of a batch do not depend on how far it is padded (dynamic padding to its
    longest row vs max_seq_len): the hidden-state term averages over real tokens only."""
    batch = random_batch(seed=4, b=4, t=8, padded_rows={1: -3, 2: 2, 3: -1})
    short, long_ = setups(seed=7), setups(seed=7)
    a = short.step(batch, lambda_distill=1.0, lambda_logit=1.0)
    b = long_.step(_pad_to(batch, 32), lambda_distill=1.0, lambda_logit=1.0)
    for w in WIDTHS:
        for term in ("rep", "logit", "loss"):
            np.testing.assert_allclose(float(b[w][term]), float(a[w][term]), rtol=1e-6, atol=1e-7,
                                       err_msg=f"{w} {term}")
    ga, gb = short.grads(), long_.grads()
    for name in ga:
        np.testing.assert_allclose(gb[name], ga[name], rtol=0, atol=1e-6, err_msg=name)


def test_without_padding_the_term_is_the_plain_mse():
    from dynabert.train.losses import hidden_state_loss

    rng = np.random.RandomState(0)
    student = [rng.standard_normal((3, 5, 4)).astype(np.float32) for _ in range(2)]
    teacher = [rng.standard_normal((3, 5, 4)).astype(np.float32) for _ in range(2)]
    value = hidden_state_loss([paddle.to_tensor(x) for x in student], [paddle.to_tensor(x) for x in teacher],
                              paddle.ones([3, 5]))
    plain = sum(float(np.mean((s - t) ** 2)) for s, t in zip(student, teacher))
    np.testing.assert_allclose(float(value), plain, rtol=1e-6)


def test_inplace_distillation_adds_the_full_widths_logits_as_a_target(setups, teacher):
    """Smaller widths also learn the width-1.0 student's logits of the same batch (detached), weighted."""
    batch = random_batch(seed=8)
    s = setups(seed=9)
    student_w = model_weights(s.supernet.model)
    losses = supernet_step(s.supernet, s.student_states, s.teacher, s.teacher_states, tensors(batch), WIDTHS,
                           1.0, 1.0, False, inplace_weight=0.5)
    args = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    full = numpy_bert_forward(student_w, teacher.config, *args)["logits"]
    assert "inplace" not in losses[1.0]
    for w in (0.75, 0.5, 0.25):
        small = numpy_bert_forward(student_w, teacher.config, *args, heads_kept=round(w * 4), ffn_kept=int(w * 64))
        np.testing.assert_allclose(float(losses[w]["inplace"]), _soft_ce(small["logits"], full), rtol=1e-4)
        np.testing.assert_allclose(float(losses[w]["loss"]),
                                   float(losses[w]["rep"]) + float(losses[w]["logit"]) + 0.5 * _soft_ce(
                                       small["logits"], full), rtol=1e-4)
