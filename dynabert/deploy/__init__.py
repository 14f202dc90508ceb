"""The last mile: measure every exported sub-model of a finished run in fp32 and int8 on each runtime (Paddle
Inference, ONNX Runtime), choose one under latency / metric / size constraints, and write it ready to serve.

Entry point: ``select_run(run_dir, *, cfg, options, comms_is_main, log)`` (``dynabert.deploy.select``), also
the ``dynabert-select`` console command (``launcher/select_cli.py``). ``dynabert-predict`` runs the result.

    candidates.py   what can be served: sub-models from dynabert_export.json x precision x runtime, their files
    onnx_export.py  paddle2onnx export and the ONNX Runtime session
    silence.py      quiet C++ code that prints to stdout/stderr (shared by the two below)
    quantize.py     int8 post-training quantization (PaddleSlim for Paddle Inference, onnxruntime.quantization)
    runtime.py      load any candidate's files as batch -> logits
    measure.py      metric on the reported split, latency, the machine
    choose.py       Pareto front and the choice under constraints
    table.py        the candidate table and the metric cache
    plot.py         metric against latency (PNG)
    serve_dir.py    the ready-to-serve directory (card.json) and loading it back
    select.py       select_run: all of the above in order
May import the top-level modules, ``data`` and ``model``; nothing from ``train`` or ``stages``.
"""


def select_run(run_dir, **kwargs):
    """See ``dynabert.deploy.select.select_run`` (imported lazily: paddle and onnxruntime load on first use)."""
    from dynabert.deploy.select import select_run as run

    return run(run_dir, **kwargs)
