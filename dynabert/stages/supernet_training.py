"""What the width stage (``compress``) and the depth stage (``compress_depth``) share: which evaluation is
kept (``compress.select``), the training batches, and the end of training (hooks removed, the last supernet
saved, the global throughput)."""
import os
from typing import Callable, Dict, Hashable, List, Optional, Sequence

import numpy as np

from dynabert.data.batching import GlobalBatches
from dynabert.data.metrics import main_metric_name
from dynabert.io_utils import atomic_paddle_save
from dynabert.stages.common import StageContext, improves, is_finite
from dynabert.train.loop import TrainResult, global_throughput


class BestKeeper:
    """Which evaluation is best, per ``compress.select``: "supernet" keeps the step with the best mean
    selection metric over all sub-models (the original sums them, run_glue.py L216-234), "per_width" each
    sub-model's own best step. Rank 0 writes what is kept: ``save_models(keys)`` the sub-models, and with
    "supernet" the whole supernet as ``<root>/supernet.pdparams``.

    The state is plain JSON (saved in checkpoints and DONE.json): {"select", "step", "mean", <entries>:
    {name_of(key): metrics + step}}, ``entries`` being "widths" (width stage) or "models" (depth stage)."""

    def __init__(self, ctx: StageContext, *, supernet, root: str, entries: str, name_of: Callable[[Hashable], str],
                 save_models: Callable[[List[Hashable]], None], state: Optional[dict],
                 narrowest: Optional[Hashable] = None, patience: int = 0):
        self.ctx, self.supernet, self.root = ctx, supernet, root
        self.narrowest, self.patience = narrowest, patience
        self.entries, self.name_of, self.save_models = entries, name_of, save_models
        self.select = ctx.cfg.compress.select
        self.metric = main_metric_name(ctx.data.spec)
        self.state = state or {"select": self.select, "step": None, "mean": None, entries: {}}

    def offer(self, step: int, results: Dict[Hashable, Dict[str, float]]) -> None:
        recent = self.state.setdefault("recent", {})  # each sub-model's last two evaluations, for still_rising
        for k, r in results.items():
            recent[self.name_of(k)] = (recent.get(self.name_of(k), []) + [r[self.metric]])[-2:]
        if self.narrowest in results:  # patience: evaluations since the narrowest sub-model last improved
            track = self.state.setdefault("narrowest", {"best": None, "since": 0})
            value = results[self.narrowest][self.metric]
            best = None if track["best"] is None else {self.metric: track["best"]}
            if improves({self.metric: value}, best, self.metric):
                track.update(best=value, since=0)
            else:
                track["since"] += 1
        kept = self.state[self.entries]
        if self.select == "per_width":
            better = [k for k, r in results.items() if improves(r, kept.get(self.name_of(k)), self.metric)]
        else:
            mean = float(np.mean([r[self.metric] for r in results.values()]))
            current = None if self.state["mean"] is None else {self.metric: self.state["mean"]}
            better = list(results) if improves({self.metric: mean}, current, self.metric) else []
        if not better or not is_finite(self.supernet.model):
            return
        for k in better:
            kept[self.name_of(k)] = {**results[k], "step": step}
        if self.select == "supernet":
            self.state.update(step=step, mean=mean)
        self.ctx.comms.run_on_main(lambda: self._save(better))

    def patience_exhausted(self) -> Optional[str]:
        """``compress.optim.patience`` evaluations in a row without the narrowest sub-model improving: why to
        stop (``LoopHooks.stop``), else None."""
        track = self.state.get("narrowest")
        if not self.patience or not track or track["since"] < self.patience:
            return None
        return (f"{self.name_of(self.narrowest)}'s {self.metric} has not improved on {track['best']:.4f} for "
                f"{track['since']} evaluations (compress.optim.patience {self.patience})")

    def still_rising(self) -> List[tuple]:
        """(name, previous, last) of every sub-model whose selection metric rose at the last evaluation:
        it had not finished learning when training stopped (the smallest width learns slowest)."""
        return [(name, values[0], values[1]) for name, values in self.state.get("recent", {}).items()
                if len(values) == 2 and values[1] > values[0]]

    def _save(self, keys: List[Hashable]) -> None:
        self.save_models(keys)
        if self.select == "supernet":
            atomic_paddle_save(self.supernet.state_dict(), os.path.join(self.root, "supernet.pdparams"))


def training_batches(ctx: StageContext) -> GlobalBatches:
    """The global batches of ``compress.optim``, this rank's share of each; the same order for both stages.
    The task's rows and the augmented corpus (``data.train_files``): distillation is what it is for."""
    cfg, comms, data = ctx.cfg, ctx.comms, ctx.data
    return GlobalBatches(data.distill, cfg.compress.optim.batch_size, cfg.run.seed, comms.rank, comms.world_size,
                         data.pad_token_id, data.pad_to, key="compress.optim.batch_size",
                         group_by_length=cfg.data.group_by_length)


def finish_training(ctx: StageContext, name: str, supernet, outcome: TrainResult, keeper: BestKeeper,
                    hidden_states: Sequence) -> dict:
    """Remove the hidden-state hooks, save the last supernet as ``<name>/supernet.pdparams`` (rank 0), log the
    global throughput. Returns the stage's completion record: the kept evaluations ("best"), the
    throughput, the skipped steps."""
    for states in hidden_states:
        states.remove()
    ctx.comms.run_on_main(lambda: atomic_paddle_save(supernet.state_dict(), ctx.path(name, "supernet.pdparams")))
    for sub, before, last in keeper.still_rising():
        ctx.log.info(f"{name}: warning: {sub}'s {keeper.metric} on {ctx.data.selection_name} was still rising at the "
                     f"last evaluation ({before:.4f} -> {last:.4f}); it may gain from more training: try a higher "
                     "compress.optim.learning_rate (docs/recipe.md) or more compress.optim.epochs")
    speed = global_throughput(outcome.throughput, ctx.comms)
    ctx.log.info(f"{name}: {speed['samples_per_s']:.1f} samples/s, {speed['tokens_per_s']:.0f} tokens/s (global)")
    return {"best": keeper.state, "throughput": speed, "skipped_steps": outcome.skipped_steps,
            "stopped_early_at_step": outcome.stopped_early}
