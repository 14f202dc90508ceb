"""One DynaBERT optimisation step's mathematics: teacher once, every width forward+backward.

No optimizer, no communication, no logging here: the loop (dynabert/trainer.py) owns those.
"""
import contextlib
from typing import Callable, ContextManager, Dict, List, Optional, Sequence

import paddle

from dynabert.losses import distill_loss, logit_loss, task_loss


class HiddenStates:
    """Records the outputs of the embedding layer and of every transformer block of a BERT, in order.

    Forward post-hooks on the layer *objects*, not on sublayer names: OFA's name-keyed hooks stop
    firing once the model is wrapped (defect 6, docs/upstream-defects.md), these cannot."""

    def __init__(self, model: paddle.nn.Layer):
        bert = model.bert
        self._layers = [bert.embeddings] + list(bert.encoder.layers)
        self._outputs: List[paddle.Tensor] = []
        self._paused = False
        self._hooks = [layer.register_forward_post_hook(self._record) for layer in self._layers]

    def _record(self, layer, inputs, output):
        if self._paused:
            return
        self._outputs.append(output[0] if isinstance(output, (tuple, list)) else output)

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

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


def forward(model, batch: Dict[str, paddle.Tensor]) -> paddle.Tensor:
    return model(batch["input_ids"], token_type_ids=batch["token_type_ids"],
                 attention_mask=batch["attention_mask"])


def _backward(loss: paddle.Tensor) -> None:
    loss.backward()


def finetune_step(model, batch, regression: bool, backward: Callable = _backward) -> Dict[str, paddle.Tensor]:
    loss = task_loss(forward(model, batch), batch["labels"], regression)
    backward(loss)
    return {"loss": loss}


def supernet_step(supernet, student_states: HiddenStates, teacher, teacher_states: HiddenStates,
                  batch: Dict[str, paddle.Tensor], widths: Sequence[float], lambda_distill: float,
                  lambda_logit: float, regression: bool, backward: Callable = _backward, *,
                  phase: Optional[Callable[[str], ContextManager]] = None,
                  inplace_weight: float = 0.0, lambda_task: float = 0.0) -> Dict[float, Dict[str, paddle.Tensor]]:
    """Gradients of every width accumulate in the parameters; the caller reduces and steps once.

    The teacher runs once, under no_grad: its outputs are the same for every width, and upstream's
    once-per-width teacher costs ~30% of the step (defect 5, measured in docs/upstream-defects.md).
    ``phase(name)`` (benchmarks only) wraps each part in a context, "teacher" and "width W", to time it.

    ``inplace_weight`` > 0 adds in-place distillation (slimmable networks' "sandwich rule"): every smaller
    width also learns the full width's logits of the same batch (detached; no extra forward pass), weighted
    by it. The full width then runs first. ``lambda_task`` > 0 adds every width's loss on the true labels.
    With both distillation weights 0 (DynaBERT's width stage without augmented data) the teacher does not run."""
    phase = phase or _no_phase
    teacher_logits = teacher_hidden = None
    if lambda_distill or lambda_logit:
        with phase("teacher"), paddle.no_grad():
            teacher_logits = forward(teacher, batch)
            teacher_hidden = teacher_states.take()
    losses = {}
    full_logits = None
    for width in (sorted(widths, reverse=True) if inplace_weight else widths):
        with phase(f"width {width}"):
            supernet.set_width(width)
            logits = forward(supernet, batch)
            terms = distill_loss(student_states.take(), teacher_hidden, logits, teacher_logits,
                                 attention_mask=batch["attention_mask"], token_share=batch.get("token_share"),
                                 lambda_distill=lambda_distill, lambda_logit=lambda_logit, regression=regression,
                                 labels=batch["labels"], lambda_task=lambda_task)
            if inplace_weight and full_logits is not None:
                terms["inplace"] = logit_loss(logits, full_logits, regression)
                terms["loss"] = terms["loss"] + inplace_weight * terms["inplace"]
            elif inplace_weight:
                full_logits = logits.detach()
            backward(terms["loss"])  # (scaled under fp16)
            losses[width] = {k: v.detach() for k, v in terms.items()}
    return losses


_NULL_CONTEXT = contextlib.nullcontext()  # reusable: the default phase costs one call per part


def _no_phase(name: str) -> ContextManager:
    return _NULL_CONTEXT
