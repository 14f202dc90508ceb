"""The candidates of a finished run: every exported sub-model, in each precision and each runtime, with its files.

Sub-models are found by their ``dynabert_export.json`` under ``<run>/export/*/``, never by the directory name:
the width (and the depth, once exports carry one) come from that file. A candidate is one sub-model in one
precision (fp32, int8) on one runtime (paddle, onnxruntime). Its derived files (ONNX export, int8 models) are
made once into ``<artifacts>/<sub-model key>/`` and reused while the source inference model is unchanged
(a ``source.json`` stamp records the source file's size and modification time and the settings).
"""
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from dynabert.deploy.runtime import PRECISIONS, RUNTIMES
from dynabert.errors import UserError
from dynabert.io_utils import atomic_write_text
from dynabert.model.export import EXPORT_META, INFERENCE_PREFIX


@dataclass(frozen=True)
class SubModel:
    """One exported directory."""

    path: str
    width: float
    depth: Optional[float]  # DynaBERT depth multiplier; None when the export has no depth dimension
    layers: int
    num_heads: int
    parameters: int
    encoder_parameters: int

    @property
    def key(self) -> str:
        return f"width_{self.width:g}" + ("" if self.depth is None else f"_depth_{self.depth:g}")


@dataclass
class Candidate:
    model: SubModel
    runtime: str
    precision: str
    files: Dict[str, str] = field(default_factory=dict)  # runtime.load_runner's files, once prepared

    @property
    def name(self) -> str:
        return f"{self.model.key}/{self.runtime}/{self.precision}"

    @property
    def size_bytes(self) -> int:
        return sum(os.path.getsize(p) for p in self.files.values())


def _read_meta(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read: {e}") from None
    for key in ("width", "num_heads", "parameters"):
        if key not in meta:
            raise UserError(f"{path}: no {key!r}; not an export written by dynabert")
    return meta


def exported_models(run_dir: str) -> List[SubModel]:
    """Every exported sub-model of a run, widest (then deepest) first."""
    root = os.path.join(run_dir, "export")
    if not os.path.isdir(root):
        raise UserError(f"{run_dir}: no export/ directory; run the export stage first")
    found = []
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        meta_path = os.path.join(folder, EXPORT_META)
        if name.startswith(".") or not os.path.isfile(meta_path):
            continue  # temporary directories of an interrupted export, stray files
        meta = _read_meta(meta_path)
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            layers = int(json.load(f).get("num_hidden_layers", 0))
        found.append(SubModel(path=folder, width=float(meta["width"]),
                              depth=None if meta.get("depth") is None else float(meta["depth"]),
                              layers=int(meta.get("num_layers") or layers), num_heads=int(meta["num_heads"]),
                              parameters=int(meta["parameters"]),
                              encoder_parameters=int(meta.get("encoder_parameters", 0))))
    if not found:
        raise UserError(f"{root}: no exported sub-model (no */{EXPORT_META}); run the export stage first")
    keys = [m.key for m in found]
    if len(set(keys)) != len(keys):
        raise UserError(f"{root}: two exports describe the same sub-model ({sorted(keys)})")
    return sorted(found, key=lambda m: (-m.width, -(m.depth or 1.0)))


def enumerate_candidates(models: Sequence[SubModel], *, runtimes: Sequence[str],
                         precisions: Sequence[str]) -> List[Candidate]:
    for r in runtimes:
        if r not in RUNTIMES:
            raise UserError(f"--runtimes: unknown runtime {r!r}; known: {', '.join(RUNTIMES)}")
    for p in precisions:
        if p not in PRECISIONS:
            raise UserError(f"--precisions: unknown precision {p!r}; known: {', '.join(PRECISIONS)}")
    return [Candidate(m, r, p) for m in models for r in runtimes for p in precisions]


# ------------------------------------------------------------------------------------------------
# derived files
# ------------------------------------------------------------------------------------------------
def _stamp(model: SubModel, settings: dict) -> dict:
    params = os.path.join(model.path, INFERENCE_PREFIX + ".pdiparams")
    if not os.path.isfile(params):
        raise UserError(f"{params}: missing; the export has no Paddle inference model (export.inference_model "
                        "must be true)")
    st = os.stat(params)
    return {"source": os.path.abspath(params), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, **settings}


def _fresh(folder: str, stamp: dict, outputs: Sequence[str]) -> bool:
    try:
        with open(os.path.join(folder, "source.json"), encoding="utf-8") as f:
            return json.load(f) == stamp and all(os.path.isfile(p) for p in outputs)
    except (OSError, ValueError):
        return False


def _cached(folder: str, stamp: dict, outputs: Sequence[str], make: Callable[[], None]) -> None:
    """Run ``make`` unless ``folder`` already holds ``outputs`` made from the same source and settings."""
    if _fresh(folder, stamp, outputs):
        return
    os.makedirs(folder, exist_ok=True)
    make()
    atomic_write_text(os.path.join(folder, "source.json"), json.dumps(stamp, indent=1) + "\n")


def prepare(candidate: Candidate, *, artifacts: str, calibration: Callable[[], list], onnx_int8: str,
            calibration_settings: dict, log: Callable[[str], None] = print) -> Candidate:
    """Fill ``candidate.files``, making the ONNX export and int8 models it needs (cached).

    ``calibration()`` returns the calibration batches; it is called only when a model has to be quantized."""
    from dynabert.deploy import onnx_export, quantize

    model = candidate.model
    folder = os.path.join(artifacts, model.key)
    if candidate.runtime == "paddle" and candidate.precision == "fp32":
        model_file, params_file = onnx_export.inference_files(model.path)
        candidate.files = {"model": model_file, "params": params_file}
    elif candidate.runtime == "paddle":
        out = os.path.join(folder, "paddle_int8")
        files = {"model": os.path.join(out, quantize.PADDLE_INT8_FILES[0]),
                 "params": os.path.join(out, quantize.PADDLE_INT8_FILES[1])}
        stamp = _stamp(model, {"kind": "paddleslim quant_post_static", **calibration_settings})

        def make_paddle():
            log(f"select: int8 (PaddleSlim post-training quantization) of {model.key} ...")
            quantize.paddle_int8(model.path, out, calibration())
        _cached(out, stamp, list(files.values()), make_paddle)
        candidate.files = files
    else:
        fp32 = os.path.join(folder, "onnx", "model.onnx")
        stamp = _stamp(model, {"kind": "paddle2onnx", "opset": onnx_export.OPSET})
        _cached(os.path.dirname(fp32), stamp, [fp32], lambda: onnx_export.export_onnx(model.path, fp32))
        if candidate.precision == "fp32":
            candidate.files = {"onnx": fp32}
        else:
            out = os.path.join(folder, f"onnx_int8_{onnx_int8}")
            int8 = os.path.join(out, "model.onnx")
            stamp = _stamp(model, {"kind": f"onnxruntime quantize_{onnx_int8}",
                                   **(calibration_settings if onnx_int8 == "static" else {})})

            def make_onnx():
                log(f"select: int8 (ONNX Runtime {onnx_int8} quantization) of {model.key} ...")
                quantize.onnx_int8(fp32, int8, method=onnx_int8,
                                   batches=calibration() if onnx_int8 == "static" else ())
            _cached(out, stamp, [int8], make_onnx)
            candidate.files = {"onnx": int8}
    return candidate
