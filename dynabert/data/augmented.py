"""An augmented corpus's link to the rows it was made from: the optional ``source_row`` column.

DynaBERT's augmented data is made from the task's training rows (each sentence rewritten many times). A
held-out validation row's variants in the augmented corpus would let the compress stages train on near-copies
of the rows that select the checkpoints. When every ``data.train_files`` file has a ``source_row`` column (the
0-based index of the training row it was made from, among train.tsv's data rows), the variants of held-out rows
are dropped. Without the column nothing can be matched; the README says so.

The column is read once per file version and kept beside the corpus cache (``<task>.augmented.source_rows.npz``,
keyed by each file's path, size and modification time), so a warm start does not read the corpus again.
"""
import csv
import json
import os
from typing import List, Optional

import numpy as np

from dynabert.errors import UserError

COLUMN = "source_row"


def _header(path: str) -> List[str]:
    with open(path, encoding="utf-8-sig") as f:
        return f.readline().rstrip("\r\n").split("\t")


def _read_column(path: str, column: str) -> np.ndarray:
    values = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        index = next(reader).index(column)
        for line, fields in enumerate(reader, start=2):
            if not any(fields):
                continue
            try:
                values.append(int(fields[index]))
            except (IndexError, ValueError):
                raise UserError(f"{path}:{line}: {column} must be the index of a training row, got "
                                f"{fields[index] if index < len(fields) else 'nothing'!r}") from None
    return np.asarray(values, dtype=np.int64)


def source_rows(files: List[str], store: Optional[str]) -> Optional[np.ndarray]:
    """Each augmented row's source training row, in the files' order; None when the files have no
    ``source_row`` column (all of them must have it, or none). ``store``: the .npz to reuse and refresh."""
    having = [COLUMN in _header(f) for f in files]
    if not any(having):
        return None
    if not all(having):
        missing = [f for f, has in zip(files, having) if not has]
        raise UserError(f"{missing[0]}: no {COLUMN} column, but other data.train_files have one; give it to all "
                        "or none")
    key = json.dumps([[f, os.path.getsize(f), os.stat(f).st_mtime_ns] for f in files])
    if store and os.path.isfile(store):
        with np.load(store) as saved:
            if str(saved["key"]) == key:
                return saved["rows"]
    rows = np.concatenate([_read_column(f, COLUMN) for f in files])
    if store:
        tmp = f"{os.path.dirname(store)}/.{os.path.basename(store)}.tmp-{os.getpid()}.npz"
        np.savez(tmp, key=np.asarray(key), rows=rows)
        os.replace(tmp, store)
    return rows


def variants_kept(rows: Optional[np.ndarray], held: np.ndarray) -> Optional[np.ndarray]:
    """Indices of the augmented rows whose source row is not held out (None: keep all)."""
    if rows is None:
        return None
    return np.flatnonzero(~np.isin(rows, held))
