"""The FLOPs model behind dynabert-bench's MFU, checked against a count of what a forward really multiplies:
every Linear layer's input and output shapes (forward hooks) and every matmul of the attention (counted at
paddle.matmul), in a tiny BERT's supernet at each width."""
import numpy as np
import paddle
import pytest

from dynabert.model.flops import compress_step_flops, forward_flops
from dynabert.model.pretrained import tiny_bert
from dynabert.model.supernet import Supernet, model_shape


def _counted_forward(supernet, batch, seq_len, monkeypatch):
    counted = {"flops": 0}

    def linear_hook(layer, inputs, output):
        x = inputs[0]
        counted["flops"] += 2 * int(np.prod(x.shape[:-1])) * int(x.shape[-1]) * int(output.shape[-1])

    original = paddle.matmul

    def matmul(x, y, transpose_x=False, transpose_y=False, name=None):
        out = original(x, y, transpose_x=transpose_x, transpose_y=transpose_y, name=name)
        inner = x.shape[-2] if transpose_x else x.shape[-1]
        counted["flops"] += 2 * int(np.prod(out.shape)) * int(inner)
        return out

    monkeypatch.setattr(paddle, "matmul", matmul)
    monkeypatch.setattr(paddle.tensor, "matmul", matmul)
    hooks = [layer.register_forward_post_hook(linear_hook) for layer in supernet.model.sublayers()
             if isinstance(layer, paddle.nn.Linear) or type(layer).__name__ == "SuperLinear"]
    ids = paddle.to_tensor(np.random.RandomState(0).randint(5, 60, size=(batch, seq_len)).astype("int64"))
    with paddle.no_grad():
        supernet(ids, paddle.zeros_like(ids), paddle.ones([batch, seq_len], dtype="float32"))
    for h in hooks:
        h.remove()
    monkeypatch.undo()
    return counted["flops"]


@pytest.mark.parametrize("width", [1.0, 0.75, 0.5, 0.25])
def test_forward_flops_equal_what_the_forward_multiplies(width, monkeypatch):
    model = tiny_bert(num_classes=3, seed=0)
    supernet = Supernet(model, (1.0, 0.75, 0.5, 0.25))
    supernet.eval()
    supernet.set_width(width)
    counted = _counted_forward(supernet, batch=3, seq_len=7, monkeypatch=monkeypatch)
    assert counted > 0
    assert forward_flops(model_shape(model), width=width, batch=3, seq_len=7, num_classes=3) == counted


def test_the_issues_worked_example_minilm_batch_32_by_64():
    """MiniLM-L6-H384 (6 layers, 12 heads of 32, FFN 1536), 32 x 64 tokens: a teacher forward is ~44.6 GFLOP
    and the four widths' forward and backward 3 x 2.5 x that (issue 28's estimate by hand)."""
    shape = {"layers": 6, "heads": 12, "hidden": 384, "ffn": 1536, "head_dim": 32}
    teacher = forward_flops(shape, width=1.0, batch=32, seq_len=64, num_classes=2)
    assert teacher == pytest.approx(44.6e9, rel=0.005)
    step = compress_step_flops(shape, widths=(1.0, 0.75, 0.5, 0.25), batch=32, seq_len=64, num_classes=2)
    assert step == pytest.approx(teacher * (1 + 3 * 2.5), rel=0.01)
    assert compress_step_flops(shape, widths=(1.0,), batch=32, seq_len=64, num_classes=2,
                               teacher_runs=False) == 3 * teacher
