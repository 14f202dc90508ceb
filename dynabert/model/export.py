"""Turn one width of the supernet into a standalone, physically smaller model of the same family.

The exported model is a plain PaddleNLP ``*ForSequenceClassification`` (BERT, ERNIE or RoBERTa) whose
attention projections hold only the kept heads (``num_heads`` set on each attention instance) and whose
FFN has the kept neurons. It is saved as a directory (weights, config.json, vocab, and
``dynabert_export.json`` with the family and the head count, needed to rebuild it: ``load_exported``) and
as a Paddle inference model (``paddle.jit.save``) with dynamic batch size and sequence length.
"""
import json
import os
from typing import Dict, Optional

import numpy as np
import paddle

from dynabert.io_utils import atomic_directory
from dynabert.model import families
from dynabert.model.compat import whole_heads
from dynabert.model.depth import kept_layers
from dynabert.model.families import family_of
from dynabert.model.supernet import Supernet

EXPORT_META = "dynabert_export.json"
INFERENCE_PREFIX = "inference/model"


def extract_submodel(supernet: Supernet, width: float):
    """The width-``width`` sub-network as a plain model with sliced weights: the first kept heads and
    neurons, exactly what the supernet's super layers use at that width."""
    shape = supernet.shape
    family = family_of(supernet.model)
    config = family.config_from_dict(supernet.model.config.to_dict())
    config.intermediate_size = int(width * shape["ffn"])
    model = family.build(config, whole_heads(width, shape["heads"]))
    source = {name.replace(".fn.", "."): t for name, t in supernet.state_dict().items()}
    with paddle.no_grad():
        for name, param in model.state_dict().items():
            full = source[name].numpy()
            param.set_value(full[tuple(slice(0, n) for n in param.shape)])
    model.eval()
    return model


def extract_submodel_at_depth(supernet, width: float, depth: float):
    """The (width, depth) sub-network as a plain model with fewer layers: the width's sliced weights of the
    blocks depth ``depth`` keeps (``dynabert.model.depth.kept_layers``), renumbered 0..n-1. ``supernet`` is a
    Supernet or a DepthSupernet (its state_dict always holds every block)."""
    model = extract_submodel(supernet, width)
    kept = kept_layers(supernet.shape["layers"], depth)
    if kept == list(range(supernet.shape["layers"])):
        return model
    family = family_of(model)
    config = family.config_from_dict(model.config.to_dict())
    config.num_hidden_layers = len(kept)
    small = family.build(config, family.attention(family.blocks(model)[0]).num_heads)
    source = model.state_dict()
    renamed = {}
    prefix = family.block_prefix
    for name, tensor in source.items():
        if name.startswith(prefix):
            index, rest = name[len(prefix):].split(".", 1)
            if int(index) not in kept:
                continue
            name = f"{prefix}{kept.index(int(index))}.{rest}"
        renamed[name] = tensor
    if set(renamed) != set(small.state_dict()):
        raise RuntimeError(f"depth {depth}: parameter names do not line up with a {len(kept)}-layer model")
    small.set_state_dict(renamed)
    small.eval()
    return small


def parameter_count(model: paddle.nn.Layer) -> int:
    return int(sum(np.prod(p.shape) for p in model.parameters()))


def encoder_parameter_count(model) -> int:
    """The transformer blocks only: what the width shrinks (embeddings and classifier stay)."""
    return parameter_count(family_of(model).encoder(model))


class _InferenceModel(paddle.nn.Layer):
    """Positional (input_ids, token_type_ids, attention_mask) -> logits, the inference model's signature (the
    same three inputs for every family: RoBERTa's token types are all 0)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, token_type_ids, attention_mask):
        return self.model(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)


def save_exported(model, width: float, tokenizer, out_dir: str,
                  inference_model: bool = True, depth: Optional[float] = None,
                  task: Optional[dict] = None) -> Dict[str, object]:
    """Write into a temporary sibling directory, then swap it in: a crash never leaves half an export.
    ``depth`` (exports of the depth stage) adds "depth" and "num_layers" to the metadata; ``task``
    (``TaskSpec.summary()``: its name, labels, metric) is written to the file too, for dynabert-predict."""
    with atomic_directory(out_dir) as tmp:
        paddle.save(model.state_dict(), os.path.join(tmp, "model_state.pdparams"))
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        family = family_of(model)
        blocks = family.blocks(model)
        heads = family.attention(blocks[0]).num_heads
        meta = {"width": width, "num_heads": heads, "parameters": parameter_count(model),
                "encoder_parameters": encoder_parameter_count(model), "family": family.name}
        if depth is not None:
            meta.update(depth=depth, num_layers=len(blocks))
        with open(os.path.join(tmp, EXPORT_META), "w") as f:
            json.dump({**meta, "task": task} if task else meta, f, indent=2)
        if inference_model:
            spec = [paddle.static.InputSpec([None, None], "int64", "input_ids"),
                    paddle.static.InputSpec([None, None], "int64", "token_type_ids"),
                    paddle.static.InputSpec([None, None], "float32", "attention_mask")]
            static = paddle.jit.to_static(_InferenceModel(model), input_spec=spec, full_graph=True)
            paddle.jit.save(static, os.path.join(tmp, INFERENCE_PREFIX), input_spec=spec)
    return meta


def load_exported(path: str):
    """The exported model of ``path``, rebuilt as its family's classifier with the kept heads (an export
    written before families were recorded is a BERT)."""
    with open(os.path.join(path, EXPORT_META)) as f:
        meta = json.load(f)
    family = families.get(meta.get("family", "bert"))
    config = family.config_class.from_pretrained(path)
    if meta.get("num_layers", config.num_hidden_layers) != config.num_hidden_layers:
        raise ValueError(f"{path}: {EXPORT_META} says {meta['num_layers']} layers, config.json "
                         f"{config.num_hidden_layers}")
    model = family.build(config, meta["num_heads"])
    model.set_state_dict(paddle.load(os.path.join(path, "model_state.pdparams")))
    model.eval()
    return model


def inference_predictor(path: str, threads: int = 1, device: str = "cpu", gpu_id: int = 0):
    """A Paddle Inference predictor for an exported directory. CPU: ``threads`` math-library threads,
    MKLDNN off for stable numbers. GPU (not run by this project): device ``gpu_id`` with a 256 MB
    initial memory pool."""
    config = paddle.inference.Config(os.path.join(path, INFERENCE_PREFIX + ".pdmodel"),
                                     os.path.join(path, INFERENCE_PREFIX + ".pdiparams"))
    if device == "gpu":
        config.enable_use_gpu(256, gpu_id)
    else:
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(threads)
    config.disable_glog_info()
    return paddle.inference.create_predictor(config)


def run_predictor(predictor, batch: Dict[str, np.ndarray]) -> np.ndarray:
    for name in predictor.get_input_names():
        predictor.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(batch[name]))
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
