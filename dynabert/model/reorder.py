"""Reorder heads and FFN neurons so the most important come first (the model's function is unchanged).

Then a width-w sub-model, which keeps the first heads and neurons, keeps the important ones.
"""
import numpy as np
import paddle

from dynabert.model.families import family_of
from dynabert.model.supernet import model_shape


def importance_order(importance: np.ndarray) -> np.ndarray:
    """Indices by decreasing importance; ties keep the original order (stable), so every rank agrees."""
    return np.argsort(-np.asarray(importance), kind="stable")


def _permute(param: paddle.Tensor, index: np.ndarray, axis: int) -> None:
    param.set_value(np.take(param.numpy(), index, axis=axis))


def reorder_heads_and_neurons(model: paddle.nn.Layer, head_importance: np.ndarray,
                              neuron_importance: np.ndarray) -> None:
    """In place. Paddle Linear weights are [in, out]: q/k/v and linear1 are permuted along their output
    columns (and bias), out_proj and linear2 along their input rows."""
    shape = model_shape(model)
    family = family_of(model)
    d = shape["head_dim"]
    with paddle.no_grad():
        for i, layer in enumerate(family.blocks(model)):
            heads = importance_order(head_importance[i])
            cols = (heads[:, None] * d + np.arange(d)[None, :]).reshape(-1)
            attn = family.attention(layer)
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                _permute(proj.weight, cols, axis=1)
                _permute(proj.bias, cols, axis=0)
            _permute(attn.out_proj.weight, cols, axis=0)

            neurons = importance_order(neuron_importance[i])
            linear1, linear2 = family.ffn(layer)
            _permute(linear1.weight, neurons, axis=1)
            _permute(linear1.bias, neurons, axis=0)
            _permute(linear2.weight, neurons, axis=0)
