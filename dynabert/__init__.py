"""DynaBERT width-adaptive compression of BERT models on PaddlePaddle.

This package holds the mathematics (importance, reorder, supernet, distillation, evaluation, export).
It knows nothing about how processes are launched: collective operations arrive as arguments.
"""
# Defect 1 of docs/upstream-defects.md: libpaddle.so exports its own zlib symbols; if Paddle is
# imported before Python's zlib module is loaded, later imports (scipy, sklearn) fail or crash.
# Importing zlib first is the whole fix, and it must happen before anything imports paddle.
import zlib  # noqa: F401  (import order is the point)

__version__ = "0.1.0"
