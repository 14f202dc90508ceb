"""What a forward pass gives: the logits of a batch, and the hidden states distillation reads.

Forward post-hooks on the layer *objects*, not on sublayer names: OFA's name-keyed hooks stop firing once
the model is wrapped (defect 6, docs/upstream-defects.md), these cannot.
"""
import contextlib
from typing import Dict, List

import paddle

from dynabert.model.families import family_of


def _tensor(output):
    return output[0] if isinstance(output, (tuple, list)) else output


class _OutputHooks:
    """A forward post-hook, ``_on_output``, on the embeddings and on every block of ``model``, in order.

    On the layer *objects*, not on sublayer names: OFA's name-keyed hooks stop firing once the model is
    wrapped (defect 6, docs/upstream-defects.md), these cannot."""

    def __init__(self, model: paddle.nn.Layer):
        family = family_of(model)
        self._layers = [family.embeddings(model)] + family.blocks(model)
        self._hooks = [layer.register_forward_post_hook(self._on_output) for layer in self._layers]

    def _on_output(self, layer, inputs, output):
        raise NotImplementedError

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


class HiddenStates(_OutputHooks):
    """Records the outputs of the embedding layer and of every transformer block of a model, in order."""

    def __init__(self, model: paddle.nn.Layer):
        self._outputs: List[paddle.Tensor] = []
        self._paused = False
        super().__init__(model)

    def _on_output(self, layer, inputs, output):
        if self._paused:
            return
        self._outputs.append(_tensor(output))

    def take(self) -> List[paddle.Tensor]:
        out, self._outputs = self._outputs, []
        if len(out) != len(self._layers):
            raise RuntimeError(f"expected {len(self._layers)} hidden states, captured {len(out)}")
        return out

    @contextlib.contextmanager
    def paused(self):
        """Record nothing inside (evaluation needs no hidden states and should not hold them)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False


class PaddingGradients(_OutputHooks):
    """Makes the gradient at padding positions exactly zero at the output of the embeddings and of every
    block of ``model``, inside ``with padding_gradients.of(batch):``.

    In exact arithmetic it is zero already (to e^-10000): no loss reads a padding position (the hidden-state
    loss masks them) and no real token attends to one. But Paddle's CPU softmax returns ~3e-29, not 0, for
    a masked key (defect 14, docs/upstream-defects.md), so ~1e-34 gradients leak into every padding
    position, and with nothing else there they fall into the denormal range, where each CPU multiply
    costs ~100x. Measured on MiniLM, 32 x 64 tokens with 79% padding, 2 threads: the width-1.0 backward
    1.31 s -> 0.92 s (hidden-state + logit loss), 4.5 s -> 1.45 s (logit or task loss only). Cost: one
    multiply per block output per backward. Forward values are untouched; evaluation (no_grad) skips it."""

    def __init__(self, model: paddle.nn.Layer):
        self._weights = None
        super().__init__(model)

    def _on_output(self, layer, inputs, output):
        out = _tensor(output)
        if self._weights is not None and not out.stop_gradient:
            weights = self._weights
            out.register_hook(lambda grad: grad * weights.astype(grad.dtype))

    @contextlib.contextmanager
    def of(self, batch: Dict[str, paddle.Tensor]):
        """Forward passes inside mask their gradients with ``batch``'s attention mask ([B, L], 1 = token)."""
        self._weights = batch["attention_mask"].unsqueeze(-1)
        try:
            yield
        finally:
            self._weights = None


def forward(model, batch: Dict[str, paddle.Tensor]) -> paddle.Tensor:
    return model(batch["input_ids"], token_type_ids=batch["token_type_ids"],
                 attention_mask=batch["attention_mask"])


class KeptHiddenStates(HiddenStates):
    """HiddenStates that also records which layer produced each output. ``take`` checks they are the
    embeddings followed by the blocks the encoder holds now (the kept ones at depth < 1) and sets
    ``ran`` to those blocks' indices in the full model."""

    def __init__(self, model: paddle.nn.Layer):
        self._sources: List[paddle.nn.Layer] = []
        self._model, self._family = model, family_of(model)
        self._index = {id(layer): i for i, layer in enumerate(self._family.blocks(model))}
        self.ran: List[int] = []
        super().__init__(model)  # must see the full depth: it hooks every block

    def _on_output(self, layer, inputs, output):
        if self._paused:
            return
        self._sources.append(layer)
        super()._on_output(layer, inputs, output)

    def take(self) -> List[paddle.Tensor]:
        expected = [self._family.embeddings(self._model)] + self._family.blocks(self._model)
        out, sources = self._outputs, self._sources
        self._outputs, self._sources = [], []
        if len(sources) != len(expected) or any(a is not b for a, b in zip(sources, expected)):
            raise RuntimeError(f"expected the hidden states of the embeddings and {len(expected) - 1} blocks, "
                               f"captured {len(sources)}")
        self.ran = [self._index[id(layer)] for layer in sources[1:]]
        return out
