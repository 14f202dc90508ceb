"""Models: loading and saving, upstream compatibility fixes, the width supernet and the depth view,
importance and reordering, forward outputs and hidden-state hooks, and export of smaller models.

The mathematics of a model, with no optimizer, loop or file layout of a run. May import the top-level
modules and ``data``; nothing from ``train``, ``stages`` or ``deploy``.
"""
