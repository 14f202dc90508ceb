"""An exported sub-model as ONNX (paddle2onnx, from its Paddle inference model) and its ONNX Runtime session.

paddle2onnx 2.x refuses to import on Paddle < 3.0, so the pinned 1.3.1 converts the ``paddle.jit.save``d
program (dynamic batch and sequence axes are kept). The ONNX model has the same inputs as the Paddle inference
model (``input_ids``, ``token_type_ids`` int64 and ``attention_mask`` float32, each ``[batch, seq]``) and one
output, the logits.
"""
import os
from typing import Dict

import numpy as np

from dynabert.deploy.silence import silenced_output
from dynabert.errors import UserError
from dynabert.model.export import INFERENCE_PREFIX

OPSET = 14  # what paddle2onnx picks for BERT anyway; ORT 1.23 runs it and its int8 tools accept it


def inference_files(export_dir: str) -> tuple:
    """(model.pdmodel, model.pdiparams) of an exported directory; UserError if it has none."""
    model = os.path.join(export_dir, INFERENCE_PREFIX + ".pdmodel")
    params = os.path.join(export_dir, INFERENCE_PREFIX + ".pdiparams")
    for path in (model, params):
        if not os.path.isfile(path):
            raise UserError(f"{path}: missing; the export has no Paddle inference model (export.inference_model "
                            "must be true)")
    return model, params


def export_onnx(export_dir: str, out_path: str, *, opset: int = OPSET) -> str:
    """Convert ``export_dir``'s Paddle inference model to ONNX at ``out_path`` (temporary name, then renamed)."""
    import paddle2onnx

    model, params = inference_files(export_dir)
    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(out_path)}.tmp-{os.getpid()}")
    try:
        with silenced_output():
            paddle2onnx.export(model, params, save_file=tmp, opset_version=opset, auto_upgrade_opset=True,
                               verbose=False, enable_onnx_checker=True, enable_optimize=True)
        if not os.path.isfile(tmp):
            raise RuntimeError(f"paddle2onnx wrote no model for {export_dir}")
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out_path


def ort_session(path: str, *, threads: int = 1):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads, one inter-op thread, all graph
    optimisations (ORT fuses LayerNorm, GELU and MatMul+Add on load)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def run_session(session, batch: Dict[str, np.ndarray]) -> np.ndarray:
    """Logits of one batch; only the inputs the model declares are fed."""
    feed = {i.name: np.ascontiguousarray(batch[i.name]) for i in session.get_inputs()}
    return session.run(None, feed)[0]
