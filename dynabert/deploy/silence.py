"""Quiet calls into C++ code that prints to the process's file descriptors (paddle2onnx, oneDNN passes).

Its own module so that the runtimes and the ONNX export both use it without importing each other.
"""
import contextlib
import os
import sys


@contextlib.contextmanager
def silenced_output(fds=(1,)):
    """Silence file descriptors (default: 1) for a call into C++ code that prints progress there (paddle2onnx;
    Paddle's oneDNN int8 passes write a line per op kind to 2). Python's streams are flushed first; errors
    still arrive as Python exceptions with their messages."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    with open(os.devnull, "w") as null:
        for fd in fds:
            os.dup2(null.fileno(), fd)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip(fds, saved):
                os.dup2(copy, fd)
                os.close(copy)
