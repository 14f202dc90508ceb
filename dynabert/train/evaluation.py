"""Dev-set prediction and metrics, sharded across ranks and gathered back in the original order.

Each rank predicts a disjoint block of the dev set; the blocks are gathered and put back in order, so
the metric is computed over exactly the examples a single process would see, once each.
"""
from typing import Callable, Dict, Sequence

import numpy as np
import paddle

from dynabert.collectives import Collectives
from dynabert.config import Config
from dynabert.data.batching import eval_batches, to_tensors
from dynabert.data.metrics import compute_metrics
from dynabert.data.task_data import TaskData


def predict(model_fn: Callable, features: Sequence, batch_size: int, comms: Collectives,
            pad_token_id: int) -> np.ndarray:
    """Logits [N, classes] for every example, identical on every rank. ``model_fn(batch) -> logits``."""
    local_idx, local_out = [], []
    with paddle.no_grad():
        for idx, batch in eval_batches(features, batch_size, comms.rank, comms.world_size, pad_token_id):
            local_idx.extend(int(i) for i in idx)
            local_out.append(model_fn(to_tensors(batch)).numpy())
    width = local_out[0].shape[-1] if local_out else 0
    local = (np.asarray(local_idx, dtype=np.int64),
             np.concatenate(local_out) if local_out else np.zeros([0, width], np.float32))
    gathered = comms.all_gather_object(local)
    index = np.concatenate([g[0] for g in gathered])
    logits = np.concatenate([g[1] for g in gathered if len(g[0])])
    if sorted(index.tolist()) != list(range(len(features))):
        raise RuntimeError(f"evaluation covered {len(index)} predictions for {len(features)} examples")
    out = np.empty_like(logits)
    out[index] = logits
    return out


def predictions_from_logits(logits: np.ndarray, regression: bool) -> np.ndarray:
    return logits.reshape(-1) if regression else logits.argmax(axis=-1)


def evaluate(model_fn: Callable, features: Sequence, task, regression: bool, batch_size: int,
             comms: Collectives, pad_token_id: int) -> Dict[str, float]:
    """Metrics of ``task`` (its TaskSpec, or a GLUE task's name) over ``features``."""
    logits = predict(model_fn, features, batch_size, comms, pad_token_id)
    labels = np.asarray([f.label for f in features])
    return compute_metrics(task, predictions_from_logits(logits, regression), labels)


def metrics_on(features: Sequence, model_fn, data: TaskData, cfg: Config, comms: Collectives) -> Dict[str, float]:
    """Metrics of ``model_fn(batch) -> logits`` over ``features`` (sharded over ranks, gathered)."""
    return evaluate(model_fn, features, data.spec, data.regression, cfg.run.eval_batch_size, comms,
                    data.pad_token_id)
