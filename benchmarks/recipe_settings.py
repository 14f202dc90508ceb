"""The recipe study's settings (benchmarks/recipe_study.py, docs/recipe.md): what every run pins, and what each
setting changes on top, as a function of the study's base config."""
from dataclasses import dataclass
from typing import Callable

from dynabert.errors import UserError

# Pinned in every run: the protocol users see, and the tutorial's recipe as the base every setting changes.
PROTOCOL = {"data.select_on": "validation", "compress.select": "supernet"}
TUTORIAL = {"compress.lambda_distill": 0.1, "compress.lambda_logit": 0.1, "compress.inplace_distill": 0.0}


@dataclass(frozen=True)
class Setting:
    name: str
    what: str
    changes: Callable  # base Config -> {dotted key: value}, on top of TUTORIAL

    def pinned(self, base) -> dict:
        """Every value a run of this setting pins: the tutorial's recipe, then this setting's changes."""
        return {**TUTORIAL, **self.changes(base)}


def _weights(hidden: float, logit: float) -> Callable:
    return lambda base: {"compress.lambda_distill": hidden, "compress.lambda_logit": logit}


SETTINGS = {s.name: s for s in (
    Setting("tutorial", "the tutorial's weights, hidden 0.1 / logit 0.1 (today's default)", lambda b: {}),
    Setting("dynabert_w", "DynaBERT's width stage: hidden 0.1 / logit 1.0 (width_lambda2 / width_lambda1)",
            _weights(0.1, 1.0)),
    Setting("dynabert", "hidden 1.0 / logit 1.0 (DynaBERT's depth-stage weights, the issue's 1/1)",
            _weights(1.0, 1.0)),
    # AdamW cancels a factor common to both weights (but for clipping and eps): 0.5/0.5 would repeat the
    # tutorial's logit:hidden ratio, so the point between changes the ratio (docs/recipe.md).
    Setting("mid", "hidden 0.1 / logit 0.3: between the tutorial and DynaBERT's width stage", _weights(0.1, 0.3)),
    Setting("scale_half", "hidden 0.5 / logit 0.5: the tutorial's ratio, 5x the scale", _weights(0.5, 0.5)),
    Setting("inplace", "tutorial + in-place distillation (weight 1.0) from the full width's logits",
            lambda b: {"compress.inplace_distill": 1.0}),
    # Seed 1 of the study: at 1.0 (10x the teacher's logit weight) the smaller widths' in-place term
    # dominates the shared weights' gradient and width 1.0 lost 3.9 points; so also at the logit weight.
    Setting("inplace_low", "tutorial + in-place distillation weighted as the teacher's logits (0.1)",
            lambda b: {"compress.inplace_distill": b.compress.lambda_logit}),
    Setting("lr2x", "tutorial, 1 epoch at twice the learning rate",
            lambda b: {"compress.optim.learning_rate": 2 * b.compress.optim.learning_rate}),
    Setting("epochs2", "tutorial, 2x the epochs over the same rows at today's rate (2x steps)",
            lambda b: {"compress.optim.epochs": 2 * b.compress.optim.epochs}),
    Setting("epochs2_half", "tutorial, 2x the epochs over half the rows: the same steps as 1 epoch",
            lambda b: {"compress.optim.epochs": 2 * b.compress.optim.epochs,
                       "data.train_limit": b.data.train_limit // 2 if b.data.train_limit else None}),
    Setting("eval50", "DynaBERT's selection cadence: evaluate (all widths) every 50 steps",
            lambda b: {"compress.optim.eval_every": 50}),
    Setting("dynabert_optim", "DynaBERT's optimizer: no warmup, no weight decay",
            lambda b: {"compress.optim.warmup_ratio": 0.0, "compress.optim.weight_decay": 0.0}),
    # Without augmented data (this study has none) DynaBERT's width stage trains on the labels alone
    # (run_glue.py:165-166); the tutorial never uses them. Both, and the labels added to the tutorial's terms:
    Setting("task", "tutorial + every width's loss on the true labels, weighted as the teacher's logits",
            lambda b: {"compress.lambda_task": b.compress.lambda_logit}),
    Setting("labels_only", "DynaBERT's width stage without --data_aug: the true labels only, no distillation",
            lambda b: {"compress.lambda_distill": 0.0, "compress.lambda_logit": 0.0, "compress.lambda_task": 1.0}),
    # Added in session 7: `task` and `lr2x` each beat the tutorial on every seed; do they add up?
    Setting("task_lr2x", "task + lr2x: the labels at the logit weight and twice the learning rate",
            lambda b: {"compress.lambda_task": b.compress.lambda_logit,
                       "compress.optim.learning_rate": 2 * b.compress.optim.learning_rate}),
)}


def parse_define(text: str) -> Setting:
    """--define NAME=KEY=VALUE[;KEY=VALUE...]: a setting of your own (e.g. a combination)."""
    name, _, body = text.partition("=")
    pairs = [p.partition("=") for p in body.split(";") if p.strip()]
    if not name.strip() or not pairs or any(not sep for _, sep, _ in pairs):
        raise UserError(f"--define {text}: expected NAME=section.key=value[;section.key=value...]")
    changes = {k.strip(): v.strip() for k, _, v in pairs}
    return Setting(name.strip(), "defined on the command line: " + body, lambda b: dict(changes))
