"""Periodic checkpoints that a crash can never leave half-written, and finding the newest good one.

A checkpoint is a directory ``<root>/step_<N>/`` holding the model, the optimizer (with its learning-rate
schedule), ``state.json`` (position in the data, best-so-far, the config fingerprint) and any arrays the
stage needs (the importance scores). It is written by rank 0 into a temporary directory, then
``manifest.json`` with every file's size and SHA-256 is written last, then the directory is renamed into
place. A directory without a manifest, or whose files do not match it, is not a checkpoint.

There is no RNG state to save: the dropout generator is re-seeded every step from (seed, rank, step)
(see trainer.step_seed) and the data order is a function of (seed, epoch), so position alone restores
the random streams exactly.
"""
import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import paddle

from dynabert import faults
from dynabert.errors import UserError
from dynabert.io_utils import atomic_directory

MANIFEST = "manifest.json"
_DUE_KEY = "dynabert/checkpoint_due_at_step"
STATE = "state.json"
MODEL = "model.pdparams"
OPTIMIZER = "optimizer.pdopt"
ARRAYS = "arrays.npz"


@dataclass
class Position:
    step: int = 0           # optimizer steps completed
    epoch: int = 0          # epoch of the next batch
    step_in_epoch: int = 0  # batches of that epoch already consumed


@dataclass
class Checkpoint:
    path: str
    position: Position
    extra: dict             # stage state: best-so-far and the like
    fingerprint: dict

    def model_state(self) -> dict:
        return paddle.load(os.path.join(self.path, MODEL))

    def optimizer_state(self) -> dict:
        return paddle.load(os.path.join(self.path, OPTIMIZER))

    def arrays(self) -> Dict[str, np.ndarray]:
        path = os.path.join(self.path, ARRAYS)
        if not os.path.exists(path):
            return {}
        with np.load(path) as data:
            return {k: data[k] for k in data.files}


@dataclass
class LoadedCheckpoint(Checkpoint):
    """A checkpoint's content in memory, the same on every rank (received from rank 0)."""
    model: dict = None
    optimizer: dict = None
    loaded_arrays: dict = None

    def model_state(self) -> dict:
        return self.model

    def optimizer_state(self) -> dict:
        return self.optimizer

    def arrays(self) -> Dict[str, np.ndarray]:
        return self.loaded_arrays or {}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str) -> Optional[str]:
    """None if ``path`` is a complete checkpoint, else why not."""
    manifest = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest):
        return "no manifest (incomplete write)"
    try:
        with open(manifest) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError) as e:
        return f"unreadable manifest ({e})"
    for name, meta in files.items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            return f"{name} is missing"
        if os.path.getsize(file) != meta["bytes"] or _sha256(file) != meta["sha256"]:
            return f"{name} does not match its checksum"
    return None


def checkpoint_bytes_estimate(num_params: int) -> int:
    """Model + two Adam moments in fp32, plus slack for the temporary copy written before the swap."""
    return int(num_params * 4 * 3 * 1.2)


class Checkpointer:
    """Decides when to save (every N steps and/or M minutes), saves on the main rank, keeps the last K.

    Only rank 0 copies the state to host memory; the files are then written by a background thread
    (one write at a time: the next checkpoint first waits for the previous one), so no rank waits in a
    collective while a large checkpoint is being written."""

    def __init__(self, root: str, every_steps: int, every_minutes: float, keep: int, is_main: bool,
                 fingerprint: dict, log: Callable[[str], None] = print):
        self.root, self.every_steps, self.every_minutes = root, every_steps, every_minutes
        self.log = log
        self.keep, self.is_main, self.fingerprint = keep, is_main, fingerprint
        self.arrays: Dict[str, np.ndarray] = {}  # stage data saved with every checkpoint (importance)
        self._last_time = time.monotonic()
        self._posted = 0  # the last step rank 0 announced for a time-triggered checkpoint
        self._writer: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._step = 0  # the training loop's last completed step (it asks ``due`` after every step)
        self._slow_write = faults.slow_write_from_env()  # tests only

    @property
    def enabled(self) -> bool:
        return self.every_steps > 0 or self.every_minutes > 0

    def due(self, step: int, comms) -> bool:
        """Whether every rank checkpoints after ``step``. Step triggers are the same everywhere. The time
        trigger is rank 0's clock: when it fires, rank 0 posts the next step in the job's store and every
        rank reads it there after each step (no collective), so all take the same decision at the same
        step. Every rank must know, because saving makes the others wait for rank 0 (``run_on_main``)."""
        self._step = step
        if self.every_steps and step % self.every_steps == 0:
            return True
        if not self.every_minutes:
            return False
        if comms.is_main and time.monotonic() - self._last_time >= 60 * self.every_minutes \
                and self._posted < step:
            self._posted = step + 1
            comms.post(_DUE_KEY, step + 1)
        return comms.read(_DUE_KEY) == step

    def save(self, position: Position, model_state: Callable[[], dict], optimizer_state: Callable[[], dict],
             extra: dict) -> Optional[str]:
        """``model_state``/``optimizer_state`` are called on rank 0 only. Returns the final path of the
        checkpoint being written (complete once ``wait`` returns or the next save starts). Call it through
        ``comms.run_on_main`` on every rank: waiting for the previous write may take longer than a
        collective may wait (gloo: 30 s)."""
        self._last_time = time.monotonic()
        if not self.is_main:
            return None
        self.wait()
        final = os.path.join(self.root, f"step_{position.step:08d}")
        # Host copies now: training goes on and changes the device tensors in place.
        model, optimizer = _to_host(model_state()), _to_host(optimizer_state())
        need = int(1.05 * (_nbytes(model) + _nbytes(optimizer) + _nbytes(self.arrays)))  # + manifest, state
        free = shutil.disk_usage(_existing(self.root)).free
        if need > free:  # a write that fills the disk would fail mid-way; the last good ones stay
            self.log(f"warning: checkpoint at step {position.step} skipped: it needs {need / 2**20:.0f} MiB, "
                     f"{free / 2**20:.0f} MiB free in {self.root}; the last complete checkpoints are kept")
            return None
        state = {"position": asdict(position), "extra": extra, "fingerprint": self.fingerprint}
        self._writer = threading.Thread(target=self._write, args=(final, model, optimizer, dict(self.arrays), state),
                                        name="checkpoint-writer", daemon=True)
        self._writer.start()
        return final

    def wait(self) -> None:
        """Block until the checkpoint being written is complete; re-raise its error, if any."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _write(self, final: str, model: dict, optimizer: dict, arrays: dict, state: dict) -> None:
        try:
            with atomic_directory(final) as tmp:
                paddle.save(model, os.path.join(tmp, MODEL))
                paddle.save(optimizer, os.path.join(tmp, OPTIMIZER))
                if arrays:
                    np.savez(os.path.join(tmp, ARRAYS), **arrays)
                with open(os.path.join(tmp, STATE), "w") as f:
                    json.dump(state, f, indent=2)
                if self._slow_write is not None:  # tests: a slow filesystem, while the ranks train on
                    self._slow_write.hold(state["position"]["step"], lambda: self._step)
                faults.fire("checkpoint_write", stage=self.fingerprint.get("stage", ""), rank=0,
                            step=state["position"]["step"])  # tests: a kill before the manifest
                files = {n: {"bytes": os.path.getsize(os.path.join(tmp, n)), "sha256": _sha256(os.path.join(tmp, n))}
                         for n in sorted(os.listdir(tmp))}
                with open(os.path.join(tmp, MANIFEST), "w") as f:  # last: its presence means complete
                    json.dump({"files": files}, f, indent=2)
            self._prune()
        except BaseException as e:  # surfaced by wait() on the training thread
            self._error = e

    def _prune(self) -> None:
        for old in list_checkpoints(self.root)[:-self.keep] if self.keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)


def _nbytes(state) -> int:
    if isinstance(state, dict):
        return sum(_nbytes(v) for v in state.values())
    return int(getattr(state, "nbytes", 0))


def _existing(path: str) -> str:
    """``path`` or its nearest existing parent (the checkpoint root is created by the first write)."""
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _to_host(state):
    """Nested dicts of tensors -> the same structure of NumPy arrays (copies)."""
    if isinstance(state, dict):
        return {k: _to_host(v) for k, v in state.items()}
    if isinstance(state, paddle.Tensor):
        return state.numpy()
    return state


def list_checkpoints(root: str) -> List[str]:
    """Checkpoint directories under ``root``, oldest first (temporary directories are not listed)."""
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith("step_") and n[5:].isdigit())
    return [os.path.join(root, n) for n in names]


def latest_checkpoint(root: str, log=print) -> Optional[Checkpoint]:
    """The newest complete checkpoint; damaged ones are reported and skipped."""
    for path in reversed(list_checkpoints(root)):
        problem = verify(path)
        if problem:
            log(f"skipping checkpoint {path}: {problem}")
            continue
        return load_checkpoint(path)
    return None


def load_checkpoint(path: str) -> Checkpoint:
    """A checkpoint directory that ``verify`` accepted."""
    with open(os.path.join(path, STATE)) as f:
        state = json.load(f)
    return Checkpoint(os.path.abspath(path), Position(**state["position"]), state["extra"], state["fingerprint"])


def check_compatible(saved: dict, current: dict, path: str) -> None:
    """Refuse to resume when anything that shapes the model changed."""
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if changed:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise UserError(f"cannot resume from {path}: the config changed what shapes the model ({details}); "
                        "use a new run.out_dir or restore these settings")
