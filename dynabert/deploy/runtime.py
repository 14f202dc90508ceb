"""Run a model file in one runtime: ``load_runner(runtime, precision, files, threads)`` -> batch -> logits.

    runtime       precision  files                                       engine
    paddle        fp32       inference/model.pdmodel + .pdiparams        Paddle Inference, native CPU kernels
    paddle        int8       PaddleSlim-quantized model.pdmodel + ...    Paddle Inference with oneDNN (MKLDNN)
    onnxruntime   fp32       model.onnx (paddle2onnx)                    ONNX Runtime CPU
    onnxruntime   int8       model.int8.onnx (onnxruntime.quantization)  ONNX Runtime CPU

A batch is a dict of ``input_ids``, ``token_type_ids`` (int64) and ``attention_mask`` (float32), each
``[batch, seq]``; the result is the logits ``[batch, classes]`` as float32 NumPy.
"""
import os
from dataclasses import dataclass
from typing import Callable, Dict

import numpy as np

from dynabert.deploy.silence import silenced_output
from dynabert.errors import UserError

RUNTIMES = ("paddle", "onnxruntime")
PRECISIONS = ("fp32", "int8")
PADDLE_INT8_OPS = ("fc",)  # oneDNN int8 kernels for the Linear layers only (see paddle_predictor)


@dataclass
class Runner:
    runtime: str
    precision: str
    threads: int
    _run: Callable[[Dict[str, np.ndarray]], np.ndarray]

    def __call__(self, batch: Dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self._run(batch), dtype=np.float32)


def available_runtimes() -> Dict[str, str]:
    """{runtime: "" if usable here, else why not}."""
    out = {"paddle": ""}
    try:
        import onnxruntime  # noqa: F401
        import paddle2onnx  # noqa: F401
    except Exception as e:  # noqa: BLE001  (any import failure means: not usable on this machine)
        out["onnxruntime"] = f"{type(e).__name__}: {e}"
    else:
        out["onnxruntime"] = ""
    return out


def paddle_predictor(model_file: str, params_file: str, *, threads: int, int8: bool):
    """A Paddle Inference CPU predictor. fp32 runs Paddle's native kernels (the project's reference numbers).

    int8 needs oneDNN *and* ``enable_mkldnn_int8``: only then do Paddle's quantization passes turn PaddleSlim's
    fake-quant ops into int8 kernels (with oneDNN alone the fake-quant program runs in fp32, about twice as
    slow as the fp32 model). The int8 kernels are limited to ``fc`` (the Linear layers): with every op type
    allowed (the default) the fine-tuned MiniLM teacher fell from 0.829 to 0.601 dev accuracy on SST-2 (the
    attention products, residual adds and GELU outputs lose too much), with ``fc`` only it stays within about
    a point (docs/deploy.md)."""
    import paddle.inference as pi

    config = pi.Config(model_file, params_file)
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(int(threads))
    if int8:
        config.enable_mkldnn()
        config.enable_mkldnn_int8(set(PADDLE_INT8_OPS))
    config.disable_glog_info()
    with silenced_output((1, 2) if int8 else (1,)):  # the oneDNN int8 passes print a line per fused op kind
        return pi.create_predictor(config)


def _paddle_run(predictor):
    names = predictor.get_input_names()
    output = predictor.get_output_handle(predictor.get_output_names()[0])

    def run(batch):
        for name in names:
            predictor.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(batch[name]))
        predictor.run()
        return output.copy_to_cpu()
    return run


def load_runner(runtime: str, precision: str, files: Dict[str, str], *, threads: int = 1) -> Runner:
    """``files``: {"model", "params"} for paddle, {"onnx"} for onnxruntime (paths)."""
    if runtime not in RUNTIMES:
        raise UserError(f"runtime {runtime!r}: must be one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r}: must be one of {', '.join(PRECISIONS)}")
    for path in files.values():
        if not os.path.isfile(path):
            raise UserError(f"{path}: model file missing")
    if runtime == "paddle":
        predictor = paddle_predictor(files["model"], files["params"], threads=threads, int8=precision == "int8")
        return Runner(runtime, precision, threads, _paddle_run(predictor))
    from dynabert.deploy.onnx_export import ort_session, run_session

    session = ort_session(files["onnx"], threads=threads)
    return Runner(runtime, precision, threads, lambda batch: run_session(session, batch))
