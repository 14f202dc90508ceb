"""Mixed precision is a config option; on CPU only fp32 is accepted (Paddle's AMP does not cast there).
The fp16/bf16 paths are GPU-only and were not run by this project."""
import paddle
import pytest

from dynabert.errors import UserError
from dynabert.model.pretrained import tiny_bert
from dynabert.train.precision import Precision, on_gpu
from launcher.config import load_config


def test_fp32_is_plain_backward_and_step():
    model = tiny_bert()
    p = Precision("fp32")
    assert not p.handles_overflow and p.scaler is None
    ids = paddle.to_tensor([[2, 7, 9, 3]])
    with p.autocast():
        loss = model(ids, attention_mask=paddle.ones([1, 4])).mean()
    p.backward(loss)
    assert model.classifier.weight.grad is not None


@pytest.mark.skipif(on_gpu(), reason="on a GPU fp16/bf16 are allowed")
@pytest.mark.parametrize("mode", ["fp16", "bf16"])
def test_half_precision_is_refused_on_cpu(mode):
    with pytest.raises(UserError, match=f"run.precision: {mode} needs a GPU"):
        Precision(mode)


def test_precision_is_validated_in_the_config():
    assert load_config(None, ["run.precision=bf16"]).run.precision == "bf16"
    with pytest.raises(UserError, match="run.precision: must be fp32, fp16 or bf16"):
        load_config(None, ["run.precision=fp8"])
