"""GLUE evaluation metrics, computed with scikit-learn and scipy.

Which metric a task uses, and which key is its ``main`` (best-model selection) value, is part of the
task registry in ``dynabert.data``:

    sst-2, mnli, qnli, rte   {"accuracy"}                              main: accuracy
    mrpc, qqp                {"accuracy", "f1"}  (F1 of class 1)      main: accuracy
    cola                     {"mcc"}  (Matthews correlation)           main: mcc
    sts-b                    {"pearson", "spearman"}                   main: pearson

The main keys follow PaddleNLP's GLUE metrics, whose first value is the one its examples select on.
Custom data (``data.custom.metric``) uses the same four: accuracy; f1 ({"accuracy", "f1"}, main: f1; binary
label sets only, the positive class is the second label, index 1, as GLUE's "1"); mcc; pearson_spearman.
The task is a ``TaskSpec`` (``task_spec(cfg)``) or a GLUE task's name.
"""
import warnings

import numpy as np
from scipy import stats
from sklearn import metrics as skm

import dynabert  # noqa: F401  (zlib must be loaded before anything imports paddle)
from dynabert.data.tasks import get_task


def main_metric_name(task) -> str:
    """The key of ``compute_metrics``' result used to compare models on this task."""
    return get_task(task).main_metric


def compute_metrics(task, predictions, labels) -> dict:
    """Metrics of one task: predictions are class ids (or regression values for STS-B)."""
    spec = get_task(task)
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.ndim != 1 or predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must be equal-length 1-D "
                         "arrays (take the argmax of logits first)")
    if predictions.size == 0:
        raise ValueError("cannot compute metrics of zero predictions")
    if spec.metric == "pearson_spearman":
        return {"pearson": _correlation(stats.pearsonr, predictions, labels),
                "spearman": _correlation(stats.spearmanr, predictions, labels)}
    if spec.metric == "mcc":
        return {"mcc": float(skm.matthews_corrcoef(labels, predictions))}
    result = {"accuracy": float(skm.accuracy_score(labels, predictions))}
    if spec.metric == "accuracy_f1":
        result["f1"] = float(skm.f1_score(labels, predictions, pos_label=1, zero_division=0.0))
    return result


def _correlation(function, predictions, labels) -> float:
    # A constant input makes a correlation undefined (scipy: nan plus a warning). Report 0.0, as
    # sklearn's matthews_corrcoef does, so best-model comparisons and JSON logs stay well defined.
    if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(function(predictions.astype(np.float64), labels.astype(np.float64))[0])
