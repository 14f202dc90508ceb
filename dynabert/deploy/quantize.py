"""int8 post-training quantization of an exported sub-model, for each runtime, calibrated on training rows.

Two routes, one per runtime (``dynabert.deploy.runtime``):

* **Paddle Inference**: PaddleSlim's ``quant_post_static`` on the ``paddle.jit.save``d inference model. On
  Paddle 2.6.2 it works only through ``data_loader=`` (a ``paddle.io.DataLoader`` with a ``feed_list`` of static
  ``paddle.static.data`` variables, under static mode); ``batch_generator=`` trips an assertion in Paddle's
  ``PostTrainingQuantization``. Weights channel-wise, activations by the ``mse`` search over the calibration
  batches; only the matrix multiplications (``matmul``, ``matmul_v2``: every Linear and the attention products)
  are quantized, the layout PaddleSlim's own NLP examples use. The result runs through oneDNN (MKLDNN).
* **ONNX Runtime**: ``onnxruntime.quantization`` on the paddle2onnx export. ``dynamic`` (the default): int8
  weights, activations quantized per batch at run time, no calibration needed; ONNX Runtime's documentation
  recommends it for transformer models. ``static``: QDQ int8 weights and activations with ranges calibrated on
  the same training rows. Both are kept selectable; docs/deploy.md has the measurements behind the default.

Calibration never sees the reported split: the rows are drawn with a seed from the training file.
"""
import contextlib
import os
import shutil
from typing import Dict, Iterable, List, Sequence

import numpy as np

from dynabert.data.features import collate
from dynabert.deploy.silence import silenced_output
from dynabert.io_utils import atomic_directory
from dynabert.model.export import INFERENCE_PREFIX

INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")
PADDLE_INT8_FILES = ("model.pdmodel", "model.pdiparams")
ONNX_INT8_METHODS = ("dynamic", "static")
# The ops PaddleSlim quantizes in BERT: every Linear (matmul_v2) and the attention score/context products.
PADDLE_QUANTIZABLE_OPS = ["matmul", "matmul_v2"]


def calibration_batches(features: Sequence, *, batch_size: int, batches: int, seed: int,
                        pad_token_id: int) -> List[Dict[str, np.ndarray]]:
    """``batches`` model-input batches of ``batch_size`` training rows drawn with ``seed`` (dynamic padding)."""
    if not features:
        raise ValueError("calibration needs at least one training row")
    rng = np.random.RandomState(seed)
    count = min(len(features), batch_size * batches)
    picked = rng.choice(len(features), size=count, replace=False)
    out = []
    for start in range(0, count, batch_size):
        rows = [features[i] for i in picked[start:start + batch_size]]
        batch = collate(rows, pad_token_id)
        out.append({name: batch[name] for name in INPUT_NAMES})
    return out


# ------------------------------------------------------------------------------------------------
# Paddle Inference: PaddleSlim post-training quantization
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _static_mode():
    """PaddleSlim's PTQ runs static programs; the rest of the process stays in dynamic mode."""
    import paddle

    was_dynamic = paddle.in_dynamic_mode()
    paddle.enable_static()
    try:
        yield
    finally:
        if was_dynamic:
            paddle.disable_static()


class _BatchDataset:
    """A map-style dataset whose items are whole, already padded batches (the DataLoader does not batch)."""

    def __init__(self, batches: Sequence[Dict[str, np.ndarray]]):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return tuple(self.batches[i][name] for name in INPUT_NAMES)


def paddle_int8(export_dir: str, out_dir: str, batches: Sequence[Dict[str, np.ndarray]], *,
                algo: str = "mse") -> str:
    """Quantize ``export_dir``'s inference model into ``out_dir`` (model.pdmodel + model.pdiparams)."""
    import paddle
    from paddleslim.quant import quant_post_static

    model_dir = os.path.join(export_dir, os.path.dirname(INFERENCE_PREFIX))
    prefix = os.path.basename(INFERENCE_PREFIX)
    with atomic_directory(out_dir) as tmp, _static_mode():
        # The feed variables live in a throw-away program so nothing leaks into the default one.
        with paddle.static.program_guard(paddle.static.Program(), paddle.static.Program()):
            feed_list = [paddle.static.data("input_ids", [None, None], "int64"),
                         paddle.static.data("token_type_ids", [None, None], "int64"),
                         paddle.static.data("attention_mask", [None, None], "float32")]
            loader = paddle.io.DataLoader(_BatchDataset(batches), feed_list=feed_list, return_list=False,
                                          batch_size=None, shuffle=False)
        executor = paddle.static.Executor(paddle.CPUPlace())
        # A fresh scope: the loaded weights and calibration tensors do not stay in the global one. PaddleSlim
        # draws progress bars on stderr; our caller logs one line per model instead.
        with paddle.static.scope_guard(paddle.static.Scope()), silenced_output((1, 2)):
            quant_post_static(executor, model_dir, tmp, data_loader=loader,
                              model_filename=prefix + ".pdmodel", params_filename=prefix + ".pdiparams",
                              save_model_filename=PADDLE_INT8_FILES[0], save_params_filename=PADDLE_INT8_FILES[1],
                              batch_nums=len(batches), algo=algo,
                              quantizable_op_type=list(PADDLE_QUANTIZABLE_OPS), onnx_format=False)
    return out_dir


# ------------------------------------------------------------------------------------------------
# ONNX Runtime: onnxruntime.quantization on the paddle2onnx export
# ------------------------------------------------------------------------------------------------
class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over prepared batches."""

    def __init__(self, batches: Iterable[Dict[str, np.ndarray]]):
        self._batches = list(batches)
        self._it = iter(self._batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._batches)


def onnx_int8(onnx_path: str, out_path: str, *, method: str = "dynamic",
              batches: Sequence[Dict[str, np.ndarray]] = ()) -> str:
    """Quantize an fp32 ONNX model into ``out_path`` (written under a temporary name, then renamed)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in ONNX_INT8_METHODS:
        raise ValueError(f"method must be one of {ONNX_INT8_METHODS}, got {method!r}")
    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    work = os.path.join(folder, f".quant-{os.getpid()}")
    os.makedirs(work, exist_ok=True)
    try:
        # ONNX Runtime's recommended pre-processing (graph optimisation + shape inference). Its symbolic shape
        # inference cannot follow paddle2onnx's reshape chains, so only the ONNX shape inference runs.
        pre = os.path.join(work, "pre.onnx")
        quant_pre_process(onnx_path, pre, skip_symbolic_shape=True)
        tmp = os.path.join(work, "int8.onnx")
        if method == "dynamic":
            quantize_dynamic(pre, tmp, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                             per_channel=True)
        else:
            if not batches:
                raise ValueError("static quantization needs calibration batches")
            reader = type("Reader", (_Reader, CalibrationDataReader), {})(batches)
            quantize_static(pre, tmp, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            extra_options={"ActivationSymmetric": True})
        os.replace(tmp, out_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_path
