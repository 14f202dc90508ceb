"""Depth (DynaBERT's second stage): which layers a depth keeps, the depth view of the width supernet, the
hidden-state pairing with the teacher, gradients, and export with fewer layers.

Expected layer lists are written out by hand from the original code's rule (huawei-noah/Pretrained-
Language-Model, DynaBERT/transformers/modeling_bert.py L423-428: ``round(d * L)`` blocks with Python 3's
half-to-even rounding, block ``floor(i / d)`` for the i-th), and expected losses and logits come from the
float64 NumPy reference (tests/reference_bert.py), not from the code under test.
"""
import numpy as np
import paddle
import pytest
from paddlenlp.transformers import BertConfig, BertForSequenceClassification, BertTokenizer

from dynabert.config import model_fingerprint
from dynabert.errors import UserError
from dynabert.model.depth import DepthSupernet, check_depths, depth_dir_name, kept_layers, teacher_hidden_indices
from dynabert.model.export import (
    EXPORT_META,
    extract_submodel_at_depth,
    inference_predictor,
    load_exported,
    parameter_count,
    run_predictor,
    save_exported,
)
from dynabert.model.outputs import HiddenStates, KeptHiddenStates
from dynabert.model.supernet import Supernet
from dynabert.train.step import depth_step
from tests.reference_bert import model_weights, numpy_bert_forward, random_batch, softmax

LAYERS, HEADS, HIDDEN, FFN = 6, 4, 16, 64
WIDTHS = (1.0, 0.5)
DEPTHS = (1.0, 0.75, 0.5)

# By hand from the rule. 0.75 x 6 = 4.5 rounds to 4 (half to even), 0.25 x 6 = 1.5 rounds to 2.
KEPT = {
    6: {1.0: [0, 1, 2, 3, 4, 5], 0.75: [0, 1, 2, 4], 0.5: [0, 2, 4], 0.25: [0, 4]},
    12: {1.0: list(range(12)), 0.75: [0, 1, 2, 4, 5, 6, 8, 9, 10], 0.5: [0, 2, 4, 6, 8, 10], 0.25: [0, 4, 8]},
}
# run_glue.py L134-141, L180-183: the student's k-th hidden state (0 = embeddings, k = after k kept blocks)
# against the full-depth teacher's hidden state kept[k], the last against the teacher's last (index L).
TEACHER_STATES = {6: {1.0: [0, 1, 2, 3, 4, 5, 6], 0.75: [0, 1, 2, 4, 6], 0.5: [0, 2, 4, 6]}}


def deep_tiny_bert(layers=LAYERS, seed=0, num_classes=2, vocab_size=64):
    """tiny_bert's recipe with more layers: hidden 16, 4 heads, FFN 64, weights from RandomState(seed)."""
    config = BertConfig(vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=HEADS,
                        intermediate_size=FFN, max_position_embeddings=64, type_vocab_size=2)
    config.num_labels = num_classes
    model = BertForSequenceClassification(config)
    rng = np.random.RandomState(seed)
    state = {}
    for name, param in sorted(model.state_dict().items()):
        shape = tuple(param.shape)
        if "norm" in name and name.endswith(".weight"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            value = 0.02 * rng.standard_normal(shape)
        else:
            value = 0.2 * rng.standard_normal(shape)
        state[name] = value.astype(np.float32)
    model.set_state_dict(state)
    model.eval()
    return model


def perturb(model, seed, scale=0.05):
    rng = np.random.RandomState(seed)
    with paddle.no_grad():
        for _, p in sorted(model.state_dict().items()):
            p.set_value(p.numpy() + scale * rng.standard_normal(p.shape).astype(np.float32))


def tensors(batch):
    return {k: paddle.to_tensor(v) for k, v in batch.items()}


def logits_of(model, batch):
    with paddle.no_grad():
        return model(paddle.to_tensor(batch["input_ids"]), token_type_ids=paddle.to_tensor(batch["token_type_ids"]),
                     attention_mask=paddle.to_tensor(batch["attention_mask"])).numpy()


@pytest.fixture(scope="module")
def base():
    return deep_tiny_bert()


class Pair:
    """A student (depth view of a perturbed width supernet) and a frozen teacher supernet, with their taps."""

    def __init__(self, base, seed=3):
        self.teacher = Supernet(base, WIDTHS)
        self.teacher.eval()
        width_supernet = Supernet(base, WIDTHS)
        perturb(width_supernet.model, seed)
        self.student = DepthSupernet(width_supernet, DEPTHS)
        self.student.eval()  # no dropout: every number is deterministic
        self.student_states = KeptHiddenStates(self.student.model)
        self.teacher_states = HiddenStates(self.teacher.model)

    def step(self, batch, widths=WIDTHS, depths=DEPTHS, lambda_distill=1.0, lambda_logit=1.0, lambda_task=0.0):
        return depth_step(self.student, self.student_states, self.teacher, self.teacher_states, tensors(batch),
                          widths=widths, depths=depths, lambda_distill=lambda_distill, lambda_logit=lambda_logit,
                          regression=False, lambda_task=lambda_task)

    def grads(self):
        return {n: (np.zeros(p.shape) if p.grad is None else p.grad.numpy().copy())
                for n, p in self.student.named_parameters()}

    def close(self):
        self.student_states.remove()
        self.teacher_states.remove()


@pytest.fixture
def pairs(base):
    made = []

    def make(**kwargs):
        made.append(Pair(base, **kwargs))
        return made[-1]

    yield make
    for p in made:
        p.close()


@pytest.mark.parametrize("layers", [6, 12])
@pytest.mark.parametrize("depth", [1.0, 0.75, 0.5, 0.25])
def test_kept_layers_follow_the_original_rule(layers, depth):
    assert kept_layers(layers, depth) == KEPT[layers][depth]
    assert teacher_hidden_indices(layers, depth) == KEPT[layers][depth] + [layers]


def test_teacher_pairing_of_the_original():
    for depth, expected in TEACHER_STATES[6].items():
        assert teacher_hidden_indices(6, depth) == expected


def test_depths_that_keep_nothing_or_the_same_layers_are_refused():
    with pytest.raises(UserError, match=r"compress.depths: depth 0.05 x 6 layers keeps no layer"):
        check_depths(6, (1.0, 0.05))
    with pytest.raises(UserError, match=r"compress.depths: depths 1.0 and 0.95 keep the same 6 of 6 layers"):
        check_depths(6, (1.0, 0.95))
    check_depths(12, (1.0, 0.75, 0.5, 0.25))


@pytest.mark.parametrize("value,message", [
    ("[0.5]", "compress.depths: must include 1.0"),
    ("[1.0,0.0]", "compress.depths: every depth must be in (0, 1]"),
    ("[1.0,1.5]", "compress.depths: every depth must be in (0, 1]"),
    ("[1.0,0.5,0.5]", "compress.depths: depths must be distinct"),
])
def test_config_validates_depths(value, message):
    from launcher.config import load_config

    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [f"compress.depths={value}"])


def test_depths_are_off_by_default_and_part_of_the_fingerprint():
    from launcher.config import load_config

    default = load_config(None, [])
    assert default.compress.depths == (1.0,)
    deep = load_config(None, ["compress.depths=[1.0,0.75,0.5]"])
    assert model_fingerprint(deep)["compress.depths"] == [1.0, 0.75, 0.5]
    assert model_fingerprint(default) != model_fingerprint(deep)


def test_depth_view_matches_reference_and_restores_every_layer(base, pairs):
    p = pairs()
    student = p.student
    full_layers = student.model.bert.encoder.layers
    names = set(student.state_dict())
    batch = random_batch(labels=False)
    weights = model_weights(student.model)
    for width in WIDTHS:
        student.set_width(width)
        for depth in DEPTHS:
            with student.at_depth(depth):
                got = logits_of(student, batch)
                p.student_states.take()
                assert p.student_states.ran == KEPT[6][depth]
                assert set(student.state_dict()) == names  # always every layer, even inside the view
            ref = numpy_bert_forward(weights, base.config, batch["input_ids"], batch["token_type_ids"],
                                     batch["attention_mask"], heads_kept=round(width * HEADS),
                                     ffn_kept=int(width * FFN), layers_kept=KEPT[6][depth])["logits"]
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5, err_msg=f"{width} {depth}")
    assert student.model.bert.encoder.layers is full_layers and len(full_layers) == LAYERS
    assert student.model.bert.encoder.num_layers == LAYERS
    with pytest.raises(ValueError, match="not one of the supernet's depths"):
        student.set_depth(0.25)


def _masked_mse(a, b, mask):
    m = mask[..., None]
    return float(((a - b) ** 2 * m).sum() / (m.sum() * a.shape[-1]))


def _soft_ce(student_logits, teacher_logits):
    z = student_logits - student_logits.max(-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-(softmax(teacher_logits) * log_probs).sum(-1).mean())


def test_loss_pairs_each_kept_layer_with_the_original_teacher_layer(base, pairs):
    """rep = sum over the student's states of the masked MSE against the teacher (the width supernet at the
    same width, full depth) states the original pairs them with; logit = soft CE against that teacher."""
    p = pairs(seed=5)
    batch = random_batch()
    student_w, teacher_w = model_weights(p.student.model), model_weights(p.teacher.model)
    losses = p.step(batch, lambda_distill=0.7, lambda_logit=2.0)
    args = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    for width in WIDTHS:
        sizes = {"heads_kept": round(width * HEADS), "ffn_kept": int(width * FFN)}
        teacher = numpy_bert_forward(teacher_w, base.config, *args, **sizes)
        for depth in DEPTHS:
            student = numpy_bert_forward(student_w, base.config, *args, layers_kept=KEPT[6][depth], **sizes)
            paired = [teacher["hidden_states"][j] for j in TEACHER_STATES[6][depth]]
            assert len(paired) == len(student["hidden_states"])
            mask = batch["attention_mask"]
            rep = 0.7 * sum(_masked_mse(s, t, mask) for s, t in zip(student["hidden_states"], paired))
            logit = _soft_ce(student["logits"], teacher["logits"])
            got = losses[f"{width}_d{depth}"]
            np.testing.assert_allclose(float(got["rep"]), rep, rtol=1e-4, err_msg=f"{width} {depth}")
            np.testing.assert_allclose(float(got["logit"]), logit, rtol=1e-4, err_msg=f"{width} {depth}")
            np.testing.assert_allclose(float(got["loss"]), rep + 2.0 * logit, rtol=1e-4)
    assert p.student.depth == 1.0 and len(p.student.model.bert.encoder.layers) == LAYERS


@pytest.mark.parametrize("depth", DEPTHS)
def test_hidden_state_distillation_reaches_the_kept_layers(pairs, depth):
    p = pairs(seed=7)
    losses = p.step(random_batch(), widths=(1.0,), depths=(depth,), lambda_distill=1.0, lambda_logit=0.0)
    assert float(losses[f"1.0_d{depth}"]["rep"]) > 1e-4
    grads = p.grads()
    for i in range(LAYERS):
        for part in ("self_attn.q_proj.fn.weight", "linear1.fn.weight", "norm2.weight"):
            g = np.abs(grads[f"bert.encoder.layers.{i}.{part}"]).max()
            if i in KEPT[6][depth]:
                assert g > 1e-7, (depth, i, part)
            else:
                assert g == 0, (depth, i, part)  # a dropped layer runs nowhere in this step
    assert np.abs(grads["bert.embeddings.word_embeddings.fn.weight"]).max() > 1e-7
    for name in ("bert.pooler.dense.fn.weight", "classifier.fn.weight"):
        assert not np.any(grads[name]), name  # the logit term is off
    for name, param in p.teacher.model.named_parameters():
        assert param.grad is None or not np.any(param.grad.numpy()), name


def test_teacher_once_per_width_and_gradients_accumulate(pairs):
    batch = random_batch(seed=2)
    both, deep, shallow = pairs(seed=9), pairs(seed=9), pairs(seed=9)
    calls = {"teacher": 0, "student": 0}

    def counter(key):
        def hook(layer, inputs, output):
            calls[key] += 1
        return hook

    hooks = [both.teacher.model.bert.register_forward_post_hook(counter("teacher")),
             both.student.model.bert.register_forward_post_hook(counter("student"))]
    try:
        both.step(batch, depths=(1.0, 0.5))
    finally:
        for h in hooks:
            h.remove()
    assert calls == {"teacher": len(WIDTHS), "student": 2 * len(WIDTHS)}
    deep.step(batch, depths=(1.0,))
    shallow.step(batch, depths=(0.5,))
    g_both, g_deep, g_shallow = both.grads(), deep.grads(), shallow.grads()
    assert not np.any(g_shallow["bert.encoder.layers.1.linear1.fn.weight"])  # layer 1 is not kept at 0.5
    for name in g_both:
        np.testing.assert_allclose(g_both[name], g_deep[name] + g_shallow[name], rtol=0, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(59)]
    (d / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return BertTokenizer(vocab_file=str(d / "vocab.txt"))


def _expected_parameters(layers, width):
    inner, ffn = round(width * HEADS) * (HIDDEN // HEADS), int(width * FFN)
    block = 3 * (HIDDEN * inner + inner) + inner * HIDDEN + HIDDEN + 2 * HIDDEN * ffn + ffn + HIDDEN + 4 * HIDDEN
    embeddings = (64 + 64 + 2) * HIDDEN + 2 * HIDDEN
    return embeddings + layers * block + HIDDEN * HIDDEN + HIDDEN + 2 * HIDDEN + 2


def test_exported_models_have_fewer_layers_and_the_supernets_logits(base, tokenizer, tmp_path):
    sn = Supernet(base, WIDTHS)
    perturb(sn.model, 11)
    student = DepthSupernet(sn, DEPTHS)
    student.eval()
    batch = random_batch(seed=4, labels=False)
    for width in WIDTHS:
        student.set_width(width)
        for depth in DEPTHS:
            with student.at_depth(depth):
                expected = logits_of(student, batch)
            sub = extract_submodel_at_depth(student, width, depth)
            assert sub.config.num_hidden_layers == len(KEPT[6][depth])
            assert parameter_count(sub) == _expected_parameters(len(KEPT[6][depth]), width)
            out = str(tmp_path / depth_dir_name(width, depth))
            meta = save_exported(sub, width, tokenizer, out, depth=depth,
                                 inference_model=(width, depth) == (0.5, 0.5))  # jit.save once: seconds
            assert meta["depth"] == depth and meta["num_layers"] == len(KEPT[6][depth])
            loaded = load_exported(out)
            assert len(loaded.bert.encoder.layers) == len(KEPT[6][depth])
            np.testing.assert_allclose(logits_of(loaded, batch), expected, rtol=0, atol=1e-5,
                                       err_msg=f"{width} {depth}")
    assert depth_dir_name(0.5, 1.0) == "width_0.5" and depth_dir_name(0.5, 0.75) == "width_0.5_depth_0.75"
    predictor = inference_predictor(str(tmp_path / "width_0.5_depth_0.5"))
    student.set_width(0.5)
    with student.at_depth(0.5):
        expected = logits_of(student, batch)
    np.testing.assert_allclose(run_predictor(predictor, batch), expected, rtol=0, atol=1e-5)
    assert (tmp_path / "width_0.5_depth_0.5" / EXPORT_META).exists()


def test_hidden_states_refuse_a_mismatch(pairs):
    p = pairs()
    with pytest.raises(RuntimeError, match="expected the hidden states of the embeddings and 6 blocks, captured 0"):
        p.student_states.take()


def test_task_term_reaches_every_width_and_depth(pairs):
    """compress.lambda_task in the depth stage: with both distillation weights 0 only the labels train (and
    the teacher does not run), and the classifier (which no hidden-state term reaches) gets a gradient from
    every (width, depth)."""
    p = pairs(seed=4)
    calls = []
    # on .bert: OFA calls model.forward, which skips the model's own hooks
    hook = p.teacher.model.bert.register_forward_post_hook(lambda layer, inputs, output: calls.append(1))
    try:
        losses = p.step(random_batch(), lambda_distill=0.0, lambda_logit=0.0, lambda_task=0.5)
    finally:
        hook.remove()
    assert calls == []
    for width in WIDTHS:
        for depth in DEPTHS:
            got = losses[f"{width}_d{depth}"]
            assert float(got["task"]) > 0
            np.testing.assert_allclose(float(got["loss"]), 0.5 * float(got["task"]), rtol=1e-6)
    assert np.abs(p.grads()["classifier.fn.weight"]).max() > 1e-7
