"""int8 post-training quantization of a tiny exported BERT: each route runs, and its logits stay close to fp32.

Tolerance: 0.1 absolute on the logits (of order 0.3-0.5 for the tiny random BERT). ONNX Runtime's dynamic and
static int8 and PaddleSlim's quantized program (simulated) differ from fp32 by at most ~0.045 here. Each test
also checks the model *was* quantized (int8 operators in its graph, logits not bit-equal to fp32), so a silent
fp32 fallback fails. Paddle Inference's oneDNN int8 kernels deviate more (see test_paddleslim_int8). Accuracy
on real SST-2 is measured by ``dynabert-select`` on the demo run (docs/deploy.md), not here.
"""
import numpy as np
import onnx
import paddle
import pytest
from paddle.base.proto import framework_pb2
from paddlenlp.transformers import BertTokenizer

from dynabert.data.features import Feature
from dynabert.deploy.onnx_export import export_onnx
from dynabert.deploy.quantize import calibration_batches, onnx_int8, paddle_int8
from dynabert.deploy.runtime import load_runner, paddle_predictor
from dynabert.model.export import run_predictor, save_exported
from dynabert.model.pretrained import tiny_bert
from tests.reference_bert import random_batch

# Slow for the fast tier (jit.save of each export, paddle2onnx, quantization: 10-20 s on a busy 2-core
# machine), so it runs with the multi-process tier, as the brief for these tests asks.
pytestmark = pytest.mark.dist

TOLERANCE = 0.1
ONEDNN_TOLERANCE = 0.5  # PaddleSlim's int8 program run by oneDNN int8 kernels (see test_paddleslim_int8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(59)]) + "\n")
    path = str(root / "width_1")
    save_exported(tiny_bert(vocab_size=64), 1.0, BertTokenizer(vocab_file=str(vocab)), path)
    rng = np.random.RandomState(0)
    features = [Feature([2] + list(rng.randint(5, 64, size=n)) + [3], [0] * (n + 2), 0)
                for n in rng.randint(4, 20, size=64)]
    calibration = calibration_batches(features, batch_size=16, batches=4, seed=0, pad_token_id=0)
    fp32 = load_runner("paddle", "fp32", {"model": f"{path}/inference/model.pdmodel",
                                          "params": f"{path}/inference/model.pdiparams"})
    onnx_fp32 = export_onnx(path, str(root / "model.onnx"))
    return {"root": root, "path": path, "calibration": calibration, "fp32": fp32, "onnx": onnx_fp32}


def check_batch():
    batch = random_batch(5, 6, 12, {-1: -3, 2: 8}, labels=False)
    return {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}


def assert_close_but_quantized(runner, fp32):
    batch = check_batch()
    got, expected = runner(batch), fp32(batch)
    assert got.shape == expected.shape and np.all(np.isfinite(got))
    diff = float(np.abs(got - expected).max())
    assert 0 < diff <= TOLERANCE, diff


def test_calibration_batches_are_seeded_training_rows():
    features = [Feature([2, 10 + i, 3], [0, 0, 0], 0) for i in range(40)]
    a = calibration_batches(features, batch_size=8, batches=3, seed=1, pad_token_id=0)
    b = calibration_batches(features, batch_size=8, batches=3, seed=1, pad_token_id=0)
    assert [x["input_ids"].shape for x in a] == [(8, 3)] * 3
    assert all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    ids = np.concatenate([x["input_ids"][:, 1] for x in a])
    assert len(set(ids.tolist())) == 24  # drawn without replacement
    assert set(a[0]) == {"input_ids", "token_type_ids", "attention_mask"}


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_onnxruntime_int8(tiny, method):
    out = onnx_int8(tiny["onnx"], str(tiny["root"] / f"int8_{method}.onnx"), method=method,
                    batches=tiny["calibration"])
    ops = {node.op_type for node in onnx.load(out).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "QuantizeLinear", "DynamicQuantizeLinear"}, ops
    assert_close_but_quantized(load_runner("onnxruntime", "int8", {"onnx": out}), tiny["fp32"])


def test_paddleslim_int8(tiny):
    out = paddle_int8(tiny["path"], str(tiny["root"] / "paddle_int8"), tiny["calibration"])
    assert paddle.in_dynamic_mode()  # quantization ran in static mode and gave the process back
    desc = framework_pb2.ProgramDesc()
    with open(f"{out}/model.pdmodel", "rb") as f:
        desc.ParseFromString(f.read())
    op_types = {op.type for block in desc.blocks for op in block.ops}
    assert "fake_channel_wise_dequantize_max_abs" in op_types, op_types  # int8 weights, channel-wise
    files = {"model": f"{out}/model.pdmodel", "params": f"{out}/model.pdiparams"}
    # The quantized program itself (its fake-quant ops simulated in fp32): PaddleSlim's calibration is sound.
    simulated = paddle_predictor(files["model"], files["params"], threads=1, int8=False)
    assert_close_but_quantized(lambda b: run_predictor(simulated, b), tiny["fp32"])
    # Executed by oneDNN's int8 kernels it deviates more (0.29 at most measured here; on real SST-2 it costs
    # -2 to +1 points, -4.6 at width 0.25: docs/deploy.md), so the check is the shape of the answer: finite,
    # within ONEDNN_TOLERANCE, and the class margins of 64 rows correlated with fp32's.
    batch = {k: v for k, v in random_batch(7, 64, 12, {}, labels=False).items()}
    got, expected = load_runner("paddle", "int8", files)(batch), tiny["fp32"](batch)
    assert got.shape == expected.shape and np.all(np.isfinite(got))
    assert np.abs(got - expected).max() <= ONEDNN_TOLERANCE
    margins = np.corrcoef(got[:, 1] - got[:, 0], expected[:, 1] - expected[:, 0])[0, 1]
    assert margins >= 0.7, margins


def test_static_needs_calibration(tiny):
    with pytest.raises(ValueError, match="calibration"):
        onnx_int8(tiny["onnx"], str(tiny["root"] / "never.onnx"), method="static", batches=())
