"""Tests for dynabert.model.supernet: the per-width OFA configs, width validation, and weight separation."""
import numpy as np
import paddle
import pytest
from paddleslim.nas.ofa import dynabert_config

from dynabert.errors import UserError
from dynabert.model.pretrained import tiny_bert
from dynabert.model.supernet import Supernet, check_widths, width_config
from tests.reference_bert import cross_entropy

WIDTHS = (1.0, 0.75, 0.5, 0.25)


@pytest.fixture(scope="module")
def teacher():
    return tiny_bert(seed=0)


@pytest.mark.parametrize("width", WIDTHS)
def test_width_config_equals_paddleslim_dynabert_config(teacher, width):
    # dynabert_config mutates the OFA's candidate dicts in place: give each side its own fresh OFA
    expected = dynabert_config(Supernet(teacher, WIDTHS).ofa, width)
    actual = width_config(Supernet(teacher, WIDTHS).ofa, width)
    assert actual == expected
    # and the rule is the DynaBERT one: attention q/k/v and the first FFN linear follow the width,
    # everything else (embeddings, out_proj, linear2, pooler) stays full
    narrowed = sorted(name for name, c in actual.items() if c.get("expand_ratio") == width and width != 1.0)
    if width != 1.0:
        assert narrowed == sorted(f"bert.encoder.layers.{i}.{n}" for i in range(2)
                                  for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "linear1"))
    assert actual["bert.encoder.layers.0.self_attn.out_proj"] == {"expand_ratio": 1.0}
    assert actual["bert.pooler.dense"] == {"expand_ratio": 1.0}


def test_width_config_does_not_mutate_candidates(teacher):
    sn = Supernet(teacher, WIDTHS)
    before = {k: dict(v) for k, v in sn.ofa._ofa_layers.items()}
    width_config(sn.ofa, 0.5)
    assert {k: dict(v) for k, v in sn.ofa._ofa_layers.items()} == before


def test_check_widths_rejects_fractional_heads(teacher):
    with pytest.raises(UserError, match=r"compress\.widths.*0\.3"):
        check_widths(teacher, [1.0, 0.3])
    with pytest.raises(UserError, match=r"compress\.widths"):
        Supernet(teacher, (1.0, 0.3))
    with pytest.raises(UserError, match="my.key"):
        check_widths(teacher, [0.3], key="my.key")
    check_widths(teacher, WIDTHS)  # multiples of 1/4 are fine with 4 heads


def test_set_width_rejects_unknown_width(teacher):
    sn = Supernet(teacher, (1.0, 0.5))
    with pytest.raises(ValueError, match="0.75"):
        sn.set_width(0.75)
    assert sn.widths == (1.0, 0.5) and sn.width == 1.0


def test_supernet_parameters_are_separate_from_the_teacher(teacher):
    snapshot = {k: v.numpy().copy() for k, v in teacher.state_dict().items()}
    sn = Supernet(teacher, WIDTHS)
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in sn.parameters()}

    sn.train()
    opt = paddle.optimizer.SGD(learning_rate=0.5, parameters=sn.parameters())
    ids = paddle.to_tensor([[2, 7, 9, 11, 3], [2, 8, 13, 3, 0]])
    mask = paddle.to_tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], dtype="float32")
    labels = paddle.to_tensor([0, 1])
    for width in (1.0, 0.5):
        sn.set_width(width)
        logits = sn(ids, paddle.zeros_like(ids), mask)
        paddle.nn.functional.cross_entropy(logits, labels).backward()
    opt.step()
    opt.clear_grad()

    changed = [k for k, v in sn.state_dict().items()
               if not np.array_equal(v.numpy(), snapshot[k.replace(".fn.", ".")])]
    assert len(changed) > 10  # the supernet did train
    for k, v in teacher.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), snapshot[k], err_msg=k)
    assert all(p.grad is None for p in teacher.parameters())
    # the teacher still computes what it computed before (its loss on the batch did not move)
    with paddle.no_grad():
        t_logits = teacher(ids, token_type_ids=paddle.zeros_like(ids), attention_mask=mask).numpy()
    fresh = tiny_bert(seed=0)
    with paddle.no_grad():
        f_logits = fresh(ids, token_type_ids=paddle.zeros_like(ids), attention_mask=mask).numpy()
    assert cross_entropy(t_logits, [0, 1]) == cross_entropy(f_logits, [0, 1])
