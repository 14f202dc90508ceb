"""Writing files so that a crash never leaves a half-written one: temporary name, then rename.

Every temporary name here is ``.<name>.tmp-<suffix>`` (or ``.<name>.old-<suffix>`` for a directory moved
aside), so what a killed writer leaves behind is recognisable and ``remove_leftovers`` can clear it.
"""
import contextlib
import os
import re
import shutil
import tempfile
from typing import List, Sequence

_LEFTOVER = re.compile(r"^\..+\.(tmp|old)-[^/]+$")


def atomic_write_text(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_paddle_save(obj, path: str) -> None:
    import paddle

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        paddle.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(out_dir: str):
    """Yield a temporary sibling directory to fill; on success it replaces ``out_dir``.

    rename() cannot replace a non-empty directory, so the old one is moved aside first and restored if
    the swap fails. On any failure the temporary directory is removed and ``out_dir`` is as it was."""
    out_dir = os.path.abspath(out_dir)
    parent, base = os.path.dirname(out_dir), os.path.basename(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a model directory is ordinarily shared
        if not os.path.isdir(out_dir):
            os.rename(tmp, out_dir)
            return
        old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
        aside = os.path.join(old, base)
        os.rename(out_dir, aside)
        try:
            os.rename(tmp, out_dir)
        except BaseException:
            os.rename(aside, out_dir)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful swap


def remove_leftovers(root: str, *, skip: Sequence[str] = ()) -> List[str]:
    """Remove the temporary files and directories that killed writers left under ``root`` (not below the
    folders in ``skip``); returns what was removed. Only safe while nothing writes under ``root``: the
    main rank calls it when a run starts, before any stage writes."""
    removed = []
    skipped = {os.path.abspath(p) for p in skip}
    for folder, dirs, files in os.walk(root):
        if os.path.abspath(folder) in skipped:
            dirs[:] = []
            continue
        for name in [d for d in dirs if _LEFTOVER.match(d)]:
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
            dirs.remove(name)
            removed.append(os.path.join(folder, name))
        for name in [f for f in files if _LEFTOVER.match(f)]:
            os.unlink(os.path.join(folder, name))
            removed.append(os.path.join(folder, name))
    return sorted(removed)


def remove_path(path: str) -> None:
    """A file or a whole directory."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)

