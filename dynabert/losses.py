"""Distillation losses, exactly as in the tutorial (so step 0 matches the upstream loop)."""
from typing import Dict, List, Sequence

import paddle
import paddle.nn.functional as F


def soft_cross_entropy(logits: paddle.Tensor, target_logits: paddle.Tensor) -> paddle.Tensor:
    """Mean over the batch of -sum_c softmax(target)_c * log_softmax(logits)_c."""
    return -paddle.mean(paddle.sum(F.log_softmax(logits, axis=-1) * F.softmax(target_logits, axis=-1), axis=-1))


def hidden_state_loss(student: Sequence[paddle.Tensor], teacher: Sequence[paddle.Tensor]) -> paddle.Tensor:
    """Sum over mapped layers (embeddings, every block) of the element-mean squared error.
    This is OFA.calc_distill_loss without lambda_distill."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"captured {len(student)} student and {len(teacher)} teacher hidden states")
    return paddle.add_n([F.mse_loss(s, t) for s, t in zip(student, teacher)])


def distill_loss(student_hidden: List[paddle.Tensor], teacher_hidden: List[paddle.Tensor],
                 student_logits: paddle.Tensor, teacher_logits: paddle.Tensor,
                 lambda_distill: float, lambda_logit: float, regression: bool) -> Dict[str, paddle.Tensor]:
    """loss = lambda_distill * hidden MSE + lambda_logit * logit loss (soft CE; MSE for regression tasks,
    where a softmax over one output is meaningless)."""
    rep = lambda_distill * hidden_state_loss(student_hidden, teacher_hidden)
    if regression:
        logit = F.mse_loss(student_logits, teacher_logits)
    else:
        logit = soft_cross_entropy(student_logits, teacher_logits)
    return {"rep": rep, "logit": logit, "loss": rep + lambda_logit * logit}
