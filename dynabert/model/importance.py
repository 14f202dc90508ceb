"""Head and FFN-neuron importance on dev data (DynaBERT, section 3.1).

Head importance: |d loss / d m| summed over dev batches, where m is a ones mask multiplying each head's
attention probabilities. Multiplying the probabilities of head h by m_h is the same as multiplying head
h's slice of the attention context (the input of out_proj) by m_h, so the mask is applied by a forward
pre-hook on each out_proj instance: no change to any class's forward (defect 4 of docs/upstream-defects.md).

Neuron importance of FFN neuron j: |sum_i W1[i,j] dW1[i,j] + b1[j] db1[j]| + |sum_k W2[j,k] dW2[j,k]|,
summed over batches. Gradients are cleared after every batch (upstream sums the running, never-cleared
gradient and leaves it in place for the first training step: defect 7 of docs/upstream-defects.md).
"""
from typing import Callable, Iterable, Tuple

import numpy as np
import paddle

from dynabert.model.families import family_of
from dynabert.model.supernet import model_shape


def _head_mask_hook(head_mask: paddle.Tensor, layer_index: int, heads: int, head_dim: int):
    def hook(layer, inputs):
        (context,) = inputs  # [batch, seq, heads * head_dim]
        b, s = context.shape[0], context.shape[1]
        # Slice inside the hook: a slice node built once would be freed by the first backward.
        row = head_mask[layer_index].reshape([1, 1, heads, 1])
        masked = context.reshape([b, s, heads, head_dim]) * row
        return (masked.reshape([b, s, heads * head_dim]),)
    return hook


def compute_importance(model: paddle.nn.Layer, batches: Iterable[dict],
                       loss_fn: Callable[[paddle.Tensor, paddle.Tensor], paddle.Tensor]
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """Returns head importance [layers, heads] and neuron importance [layers, ffn] as float64 arrays.
    ``batches`` yield dicts of tensors: input_ids, token_type_ids, attention_mask, labels.
    Runs in eval mode (no dropout) so the result does not depend on the RNG."""
    shape = model_shape(model)
    family = family_of(model)
    layers = family.blocks(model)
    ffn = [family.ffn(layer) for layer in layers]
    head_mask = paddle.ones([shape["layers"], shape["heads"]], dtype="float32")
    head_mask.stop_gradient = False
    # Accumulated on the device: one copy to the host at the end, not every FFN weight and gradient per batch.
    head_imp = paddle.zeros([shape["layers"], shape["heads"]], dtype="float32")
    neuron_imp = [paddle.zeros([shape["ffn"]], dtype="float32") for _ in layers]
    hooks = [family.attention(layer).out_proj.register_forward_pre_hook(
        _head_mask_hook(head_mask, i, shape["heads"], shape["head_dim"])) for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    model.clear_gradients()
    # Only the FFN weights' gradients are read; freezing the other weights skips their weight-gradient
    # matmuls and the dense [vocab, hidden] embedding gradient (the head mask's gradient still flows).
    # LayerNorm parameters stay trainable: Paddle 2.6.2 computes a wrong *input* gradient for layer_norm
    # when its weight and bias are frozen (compat.LAYER_NORM_FROZEN_GRAD, pinned in tests/test_compat.py).
    needed = {id(p) for linear1, linear2 in ffn for p in (linear1.weight, linear1.bias, linear2.weight)}
    needed |= {id(p) for sub in model.sublayers() if isinstance(sub, paddle.nn.LayerNorm) for p in sub.parameters()}
    frozen = [p for p in model.parameters() if id(p) not in needed and not p.stop_gradient]
    for p in frozen:
        p.stop_gradient = True
    try:
        for batch in batches:
            logits = model(batch["input_ids"], token_type_ids=batch["token_type_ids"],
                           attention_mask=batch["attention_mask"])
            loss_fn(logits, batch["labels"]).backward()
            with paddle.no_grad():
                head_imp += paddle.abs(head_mask.grad)
                for i, (linear1, linear2) in enumerate(ffn):
                    w1, b1, w2 = linear1.weight, linear1.bias, linear2.weight
                    neuron_imp[i] += paddle.abs((w1 * w1.grad).sum(axis=0) + b1 * b1.grad)
                    neuron_imp[i] += paddle.abs((w2 * w2.grad).sum(axis=1))
            head_mask.clear_gradient()
            model.clear_gradients()
    finally:
        for p in frozen:
            p.stop_gradient = False
        for h in hooks:
            h.remove()
        for p in model.parameters():  # nothing stale reaches the first training step (defect 7)
            p.clear_gradient(False)
        if was_training:
            model.train()
    return head_imp.numpy().astype(np.float64), paddle.stack(neuron_imp).numpy().astype(np.float64)
