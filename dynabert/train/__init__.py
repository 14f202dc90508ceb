"""Training: the loop, the step's mathematics, losses, precision, evaluation, checkpoints and stage state,
injected faults, the run log and preflight checks.

May import the top-level modules, ``data`` and ``model``; nothing from ``stages`` or ``deploy``.
"""
