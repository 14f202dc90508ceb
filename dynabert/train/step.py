"""One DynaBERT optimisation step's mathematics: teacher once, every width forward+backward.

The depth stage's step (every width at every depth) and the refine stage's (one standalone sub-model)
follow the width stage's. No optimizer, no
communication, no logging here: the loop (``dynabert/train/loop.py``) owns those.
"""
import contextlib
from typing import Callable, ContextManager, Dict, Optional, Sequence, Tuple

import numpy as np
import paddle

from dynabert.model.depth import DepthSupernet, teacher_hidden_indices
from dynabert.model.outputs import HiddenStates, KeptHiddenStates, PaddingGradients, forward
from dynabert.model.supernet import Supernet
from dynabert.train.losses import distill_loss, logit_loss, task_loss


def _backward(loss: paddle.Tensor) -> None:
    loss.backward()


def widths_for_step(widths: Sequence[float], *, sampling: str, random_widths: int, seed: int,
                    step: int) -> Tuple[float, ...]:
    """The widths one step trains, widest first. "all": every width. "sandwich" (BigNAS, OFA): the widest,
    the narrowest, and ``random_widths`` of the others (all of them, if fewer) drawn without replacement from
    (seed, step) alone, so every rank draws the same ones and a resumed run draws what the uninterrupted one did."""
    ordered = sorted(widths, reverse=True)
    if sampling == "all" or len(ordered) - 2 <= random_widths:
        return tuple(ordered)
    middle = ordered[1:-1]
    picked = np.random.default_rng([seed, step]).choice(len(middle), size=random_widths, replace=False)
    return tuple(sorted([ordered[0], ordered[-1], *(middle[i] for i in picked)], reverse=True))


def _masking(padding: Optional[PaddingGradients], batch) -> ContextManager:
    return padding.of(batch) if padding is not None else _NULL_CONTEXT


def _last(last_backward: Optional[Callable[[], ContextManager]]) -> ContextManager:
    return last_backward() if last_backward is not None else _NULL_CONTEXT


def finetune_step(model, batch, regression: bool, backward: Callable = _backward, *,
                  padding: Optional[PaddingGradients] = None,
                  last_backward: Optional[Callable[[], ContextManager]] = None) -> Dict[str, paddle.Tensor]:
    """``padding`` (of ``model``): zero gradients at padding positions (dynabert/model/outputs.py).
    ``last_backward()``: a context the step's last backward runs in (the bucketed all-reduce's)."""
    with _masking(padding, batch):
        loss = task_loss(forward(model, batch), batch["labels"], regression)
    with _last(last_backward):
        backward(loss)
    return {"loss": loss}


def supernet_step(supernet, student_states: HiddenStates, teacher, teacher_states: HiddenStates,
                  batch: Dict[str, paddle.Tensor], widths: Sequence[float], lambda_distill: float,
                  lambda_logit: float, regression: bool, backward: Callable = _backward, *,
                  phase: Optional[Callable[[str], ContextManager]] = None,
                  inplace_weight: float = 0.0, lambda_task: float = 0.0,
                  padding: Optional[PaddingGradients] = None,
                  last_backward: Optional[Callable[[], ContextManager]] = None,
                  ) -> Dict[float, Dict[str, paddle.Tensor]]:
    """Gradients of every width accumulate in the parameters; the caller reduces and steps once.

    The teacher runs once, under no_grad: its outputs are the same for every width, and upstream's
    once-per-width teacher costs ~30% of the step (defect 5, measured in docs/upstream-defects.md).
    ``phase(name)`` (benchmarks only) wraps each part in a context, "teacher" and "width W", to time it.

    ``inplace_weight`` > 0 adds in-place distillation (slimmable networks' "sandwich rule"): every smaller
    width also learns the full width's logits of the same batch (detached; no extra forward pass), weighted
    by it. The full width then runs first. ``lambda_task`` > 0 adds every width's loss on the true labels.
    With both distillation weights 0 (DynaBERT's width stage without augmented data) the teacher does not run.
    ``padding`` (of the supernet's model) zeroes the student's gradients at padding positions.
    ``last_backward`` (the bucketed all-reduce's ``armed``): the widths run from the narrowest to the widest
    and the widest's backward, the largest, runs inside it, so the reduction overlaps it."""
    phase = phase or _no_phase
    teacher_logits = teacher_hidden = None
    if lambda_distill or lambda_logit:
        with phase("teacher"), paddle.no_grad():
            teacher_logits = forward(teacher, batch)
            teacher_hidden = teacher_states.take()
    losses = {}
    full_logits = None
    if last_backward:       # the widest last: its backward, the largest, overlaps the reduction
        order = sorted(widths)
    elif inplace_weight:    # the widest first: its logits are the others' targets
        order = sorted(widths, reverse=True)
    else:
        order = list(widths)
    for i, width in enumerate(order):
        with phase(f"width {width}"):
            supernet.set_width(width)
            logits, terms = _student_terms(supernet, student_states, batch, teacher_hidden, teacher_logits,
                                           lambda_distill=lambda_distill, lambda_logit=lambda_logit,
                                           lambda_task=lambda_task, regression=regression, padding=padding)
            if inplace_weight and full_logits is not None:
                terms["inplace"] = logit_loss(logits, full_logits, regression)
                terms["loss"] = terms["loss"] + inplace_weight * terms["inplace"]
            elif inplace_weight:
                full_logits = logits.detach()
            with _last(last_backward) if i == len(order) - 1 else _NULL_CONTEXT:
                backward(terms["loss"])  # (scaled under fp16)
            losses[width] = {k: v.detach() for k, v in terms.items()}
    return losses


def _student_terms(student, student_states: HiddenStates, batch, teacher_hidden, teacher_logits, *,
                   lambda_distill: float, lambda_logit: float, lambda_task: float, regression: bool,
                   padding: Optional[PaddingGradients]) -> Tuple[paddle.Tensor, Dict[str, paddle.Tensor]]:
    """One student's forward and its distillation loss terms (no backward): its logits and the terms."""
    with _masking(padding, batch):
        logits = forward(student, batch)
    terms = distill_loss(student_states.take(), teacher_hidden, logits, teacher_logits,
                         attention_mask=batch["attention_mask"], token_share=batch.get("token_share"),
                         lambda_distill=lambda_distill, lambda_logit=lambda_logit, regression=regression,
                         labels=batch["labels"], lambda_task=lambda_task)
    return logits, terms


def distill_step(student, student_states: HiddenStates, teacher, teacher_states: HiddenStates,
                 batch: Dict[str, paddle.Tensor], *, lambda_distill: float, lambda_logit: float,
                 lambda_task: float, regression: bool, backward: Callable = _backward,
                 padding: Optional[PaddingGradients] = None) -> Dict[str, paddle.Tensor]:
    """One standalone student (the refine stage's exported sub-model) distilled from the teacher: the same
    loss as one width of ``supernet_step``, forward and backward; the caller reduces and steps."""
    teacher_logits = teacher_hidden = None
    if lambda_distill or lambda_logit:
        with paddle.no_grad():
            teacher_logits = forward(teacher, batch)
            teacher_hidden = teacher_states.take()
    _, terms = _student_terms(student, student_states, batch, teacher_hidden, teacher_logits,
                              lambda_distill=lambda_distill, lambda_logit=lambda_logit, lambda_task=lambda_task,
                              regression=regression, padding=padding)
    backward(terms["loss"])
    return {k: v.detach() for k, v in terms.items()}


_NULL_CONTEXT = contextlib.nullcontext()  # reusable: the default phase costs one call per part


def _no_phase(name: str) -> ContextManager:
    return _NULL_CONTEXT


def loss_key(width: float, depth: float) -> str:
    """The loss dict key of one sub-network; the loop logs it as ``w{key}/{term}``, e.g. ``w0.5_d0.75/rep``."""
    return f"{width}_d{depth}"


def depth_step(student: DepthSupernet, student_states: KeptHiddenStates, teacher: Supernet,
               teacher_states: HiddenStates, batch: Dict[str, paddle.Tensor], *, widths: Sequence[float],
               depths: Sequence[float], lambda_distill: float, lambda_logit: float, regression: bool,
               lambda_task: float = 0.0, backward: Callable = _backward,
               phase: Optional[Callable[[str], ContextManager]] = None,
               padding: Optional[PaddingGradients] = None,
               last_backward: Optional[Callable[[], ContextManager]] = None) -> Dict[str, Dict[str, paddle.Tensor]]:
    """Forward and backward of every (width, depth); gradients accumulate, the caller reduces and steps once.

    The teacher (the width supernet, frozen, full depth) runs once per width under no_grad, at that width.
    The original loops depth then width (run_glue.py L130-145) and runs its teacher per width too
    (L121-127), but never sets the teacher's width_mult, so its teacher is always the full-width model;
    we follow the intent (``hidden_max_all[width_idx]``: the teacher at the student's width). Width is the
    outer loop here so only one teacher output is alive at a time; the accumulated sum is the same.
    With both distillation weights 0 the teacher does not run (only the labels train). ``last_backward``:
    widths and depths run from the smallest up, and the full network's backward runs inside it."""
    phase = phase or (lambda name: _NULL_CONTEXT)
    distilling = bool(lambda_distill or lambda_logit)
    teacher_logits = teacher_hidden = None
    layers = student.shape["layers"]
    losses = {}
    try:
        widths = sorted(widths) if last_backward else widths
        depths = sorted(depths) if last_backward else depths
        for wi, width in enumerate(widths):
            if distilling:
                with phase(f"teacher {width}"), paddle.no_grad():
                    teacher.set_width(width)
                    teacher_logits = forward(teacher, batch)
                    teacher_hidden = teacher_states.take()
            student.set_width(width)
            for di, depth in enumerate(depths):
                last = wi == len(widths) - 1 and di == len(depths) - 1
                with phase(f"width {width} depth {depth}"):
                    student.set_depth(depth)
                    paired = teacher_hidden and [teacher_hidden[j] for j in teacher_hidden_indices(layers, depth)]
                    _, terms = _student_terms(student, student_states, batch, paired, teacher_logits,
                                              lambda_distill=lambda_distill, lambda_logit=lambda_logit,
                                              lambda_task=lambda_task, regression=regression, padding=padding)
                    with _last(last_backward) if last else _NULL_CONTEXT:
                        backward(terms["loss"])
                    losses[loss_key(width, depth)] = {k: v.detach() for k, v in terms.items()}
    finally:
        student.set_depth(1.0)
    return losses
