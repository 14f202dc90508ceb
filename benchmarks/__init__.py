"""Benchmarks of the DynaBERT project against our re-implementation of the upstream tutorial loop.

``python -m benchmarks.run_all`` runs everything (about 15 minutes on a 2-core CPU) and writes JSON,
Markdown and PNG files to benchmarks/results/; ``--smoke`` runs a tiny version of each in seconds.
Every benchmark runs in its own process so that its thread counts are fixed before Paddle is imported.
"""
# Defect 1 of docs/upstream-defects.md: zlib must be loaded before Paddle. dynabert's __init__ does that
# (and imports nothing else), so every benchmark module is safe whatever the order of its own imports.
import dynabert  # noqa: F401
