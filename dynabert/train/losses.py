"""Distillation losses: the tutorial's terms, with the hidden-state term averaged over real tokens only.

The tutorial's MSE averages over every position, padding included, so with dynamic padding and
length-grouped batches a sentence's loss depends on what it was batched with and ``lambda_distill``
weighs batches differently. Without padding both are the same number."""
from typing import Dict, List, Optional, Sequence

import paddle
import paddle.nn.functional as F


def soft_cross_entropy(logits: paddle.Tensor, target_logits: paddle.Tensor) -> paddle.Tensor:
    """Mean over the batch of -sum_c softmax(target)_c * log_softmax(logits)_c."""
    return -paddle.mean(paddle.sum(F.log_softmax(logits, axis=-1) * F.softmax(target_logits, axis=-1), axis=-1))


def masked_mse(student: paddle.Tensor, teacher: paddle.Tensor, mask: paddle.Tensor,
               tokens: Optional[paddle.Tensor] = None) -> paddle.Tensor:
    """Mean squared error over the real tokens of [B, L, H] states; ``mask`` [B, L] is 1 for tokens.
    ``tokens`` replaces the local token count as the normaliser (data parallel: this rank's share of the
    global batch's tokens, so the mean over ranks is the global mean)."""
    weights = mask.astype(student.dtype).unsqueeze(-1)
    squared = paddle.square(student - teacher) * weights
    count = weights.sum() if tokens is None else tokens.astype(student.dtype)
    return squared.sum() / (count * student.shape[-1])


def hidden_state_loss(student: Sequence[paddle.Tensor], teacher: Sequence[paddle.Tensor],
                      mask: paddle.Tensor, tokens: Optional[paddle.Tensor] = None) -> paddle.Tensor:
    """Sum over mapped layers (embeddings, every block) of the mean squared error over real tokens.
    Without padding this is OFA.calc_distill_loss without lambda_distill."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"captured {len(student)} student and {len(teacher)} teacher hidden states")
    return paddle.add_n([masked_mse(s, t, mask, tokens) for s, t in zip(student, teacher)])


def distill_loss(student_hidden: List[paddle.Tensor], teacher_hidden: List[paddle.Tensor],
                 student_logits: paddle.Tensor, teacher_logits: paddle.Tensor, *, attention_mask: paddle.Tensor,
                 lambda_distill: float, lambda_logit: float, regression: bool,
                 token_share: Optional[paddle.Tensor] = None, labels: Optional[paddle.Tensor] = None,
                 lambda_task: float = 0.0) -> Dict[str, paddle.Tensor]:
    """loss = lambda_distill * hidden MSE + lambda_logit * logit loss (soft CE; MSE for regression tasks,
    where a softmax over one output is meaningless) [+ lambda_task * the task loss on the true labels,
    when lambda_task > 0: then the terms also hold "task"]. With both distillation weights 0 only the labels
    train and the teacher's outputs may be None (the steps then skip the teacher)."""
    if not (lambda_distill or lambda_logit):
        task = task_loss(student_logits, labels, regression)
        return {"task": task, "loss": lambda_task * task}
    rep = lambda_distill * hidden_state_loss(student_hidden, teacher_hidden, attention_mask, token_share)
    logit = logit_loss(student_logits, teacher_logits, regression)
    terms = {"rep": rep, "logit": logit, "loss": rep + lambda_logit * logit}
    if lambda_task:
        terms["task"] = task_loss(student_logits, labels, regression)
        terms["loss"] = terms["loss"] + lambda_task * terms["task"]
    return terms


def task_loss(logits: paddle.Tensor, labels: paddle.Tensor, regression: bool) -> paddle.Tensor:
    """The task's own loss on the true labels: cross-entropy; MSE for regression."""
    if regression:  # in fp32: bf16 would round STS-B targets by up to ~0.016
        return F.mse_loss(logits.astype("float32").reshape([-1]), labels.astype("float32").reshape([-1]))
    # Not F.cross_entropy: Paddle 2.6's checks `count_nonzero(label == ignore_index) > 0` on the host at
    # every call, a sync per step. The same mean negative log-likelihood, without it:
    log_probs = F.log_softmax(logits.astype("float32"), axis=-1)
    return -paddle.take_along_axis(log_probs, labels.reshape([-1, 1]).astype("int64"), axis=1).mean()


def logit_loss(student_logits: paddle.Tensor, target_logits: paddle.Tensor, regression: bool) -> paddle.Tensor:
    """Soft cross-entropy against the target's distribution; MSE for regression (in fp32)."""
    if regression:
        return F.mse_loss(student_logits.astype("float32"), target_logits.astype("float32"))
    return soft_cross_entropy(student_logits, target_logits)
