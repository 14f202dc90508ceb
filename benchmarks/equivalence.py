"""Step-0 equivalence of the project and the tutorial loop: loss terms and gradients, compared by name.

Meaningful only on a batch without padding (``workload.unpadded_batch``): the project's hidden-state loss
averages over real tokens, the tutorial's over every position (dynabert/train/losses.py).
"""
import numpy as np


def compare_named(a, b):
    """The largest difference between two {name: array} maps, and the names only one of them has."""
    missing = sorted(set(a) ^ set(b))
    diffs = [float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).max())
             for k in a if k in b and a[k] is not None and b[k] is not None and np.size(a[k])]
    none_mismatch = [k for k in a if k in b and (a[k] is None) != (b[k] is None)]
    return {"max_abs_diff": max(diffs) if diffs else 0.0, "missing": missing + none_mismatch}


def equivalence_report(lp, lr, gp, gr, tol=1e-5):
    """Project (lp, gp) vs reference (lr, gr): per-width loss terms and gradients, within ``tol``."""
    terms = {}
    worst = 0.0
    for wd in lp:
        terms[str(wd)] = {}
        for k in ("rep", "logit", "loss"):
            a, b = float(lp[wd][k]), float(lr[wd][k])
            terms[str(wd)][k] = {"project": a, "reference": b, "abs_diff": abs(a - b)}
            worst = max(worst, abs(a - b))
    cmp = compare_named(gp, gr)
    max_grad = max(float(np.abs(g).max()) for g in gp.values() if g is not None)
    rel = max((float(np.abs(gp[k] - gr[k]).max()) / max(float(np.abs(gp[k]).max()), 1e-30))
              for k in gp if gp[k] is not None and gr.get(k) is not None)
    return {"tolerance": tol, "loss_terms": terms, "loss_max_abs_diff": worst,
            "grad_max_abs_diff": cmp["max_abs_diff"], "grad_max_rel_diff": rel, "grad_max_abs": max_grad,
            "grad_mismatched_names": cmp["missing"],
            "passed": bool(worst <= tol and cmp["max_abs_diff"] <= tol and not cmp["missing"])}
