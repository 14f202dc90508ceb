"""Starting jobs the way users do (``python -m launcher``, i.e. dynabert-launch) and comparing what they
leave behind: shared by the multi-process tests."""
import os
import socket
import subprocess
import sys

import numpy as np
import paddle

from tests.conftest import ROOT

TINY = os.path.join(ROOT, "configs", "tiny.yaml")


def job_env(**extra) -> dict:
    """The test process's environment without a launcher's PADDLE_* variables, one thread per process,
    no GLUE_DIR (the tiny model reads the built-in data)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_")}
    env.update(GLUE_DIR="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=ROOT, **extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, *, nnodes=1, nproc=2, node_rank=0, port=None, restarts=0, env=None) -> subprocess.Popen:
    """``dynabert-launch --device cpu`` with ``args``; for ``nnodes`` > 1 this node of a localhost job."""
    cli = [sys.executable, "-m", "launcher", "--device", "cpu", "--nproc_per_node", str(nproc),
           "--max_restarts", str(restarts), *args]
    if nnodes > 1:
        cli += ["--nnodes", str(nnodes), "--node_rank", str(node_rank), "--master", f"127.0.0.1:{port}",
                "--host", "127.0.0.1"]
    return subprocess.Popen(cli, env=env or job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def load_params(path) -> dict:
    return {k: v.numpy() for k, v in paddle.load(path).items()}


def same_parameters(a: dict, b: dict, atol=1e-6) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=atol, err_msg=name)
