"""Tokenize a GLUE split once into an on-disk cache that every rank opens without loading it.

    split = prepare("sst-2", "train", "/glue/SST-2/train.tsv", tokenizer=paddle_bert_tokenizer, max_seq_len=128,
                    cache_dir="runs/x/cache", extra_files=["aug/*.tsv"], limit=None, log=print)
    len(split); split[i]            # -> data.Feature, equal to data.encode's row i (read from disk on demand)
    split.lengths, split.labels     # memory-mapped numpy arrays (the length-grouped sampler reads lengths)

Any number of processes may call ``prepare`` at once (ranks of a job, nodes sharing a filesystem, two jobs):
they take an fcntl lock on ``<cache_dir>/<task>.<split>.lock``, shared to check and exclusive to build, so one
builds while the others block in the kernel (no polling, no collective). The builder fills a temporary
directory and renames it into place; the others then check and open it. A cache is reused when its
fingerprint matches, else rebuilt with ONE log line saying why. The fingerprint: each source file's name, size
and modification time (the task's file, then ``extra_files`` in order), the tokenizer's settings and vocabulary
(``FastTokenizer.settings``), ``max_seq_len``, truncation strategy, ``limit`` (rows kept, counted over all
files in order), library versions, FORMAT_VERSION.

Opening a warm cache costs the same whatever the corpus size: it stats the source files, reads
``manifest.json`` and checks the manifest's own SHA-256 (an edited manifest is rebuilt), compares each array
file's size with the manifest's (a truncated file is rebuilt) and maps the arrays; it reads no source or array
content. The manifest also records each source file's and each array's SHA-256, which only these read:

- a source file whose modification time changed but whose size did not: this one file is hashed (by one
  process, under the build lock); the same SHA-256 (a ``touch``, a copy) keeps the cache and records the new
  time in the manifest, another rebuilds;
- ``verify=True`` (``dynabert-prepare --verify``): every source file and every array is hashed, and a cache
  that differs is rebuilt, saying what differed.

So two changes are found only by ``verify``: a source file replaced by one of the same size and the same
modification time (a tool that restores times, or an edit within the filesystem's time granularity), and an
array file corrupted in place without changing its size (a disk error, a stray write).

A cache of another FORMAT_VERSION is rebuilt, saying so: code of two format versions sharing one cache
directory rebuilds each time they alternate.

One process builds the whole cache: measured on the 2-core machine (benchmarks/corpus_bench.py), two
processes building half each were slower, since each must parse every file to find its half and tokenizing
is no longer the dominant cost.

``<cache_dir>/<task>.<split>/`` holds ``manifest.json`` and raw little-endian arrays: ``ids.bin`` (uint16 while
the vocabulary has < 65,536 entries, else int32; all rows' tokens, special tokens included), ``offsets.bin``
(int64, rows + 1), ``segment_a.bin`` (int32: tokens of ``[CLS] a [SEP]``, type 0; the rest are type 1),
``lengths.bin`` (int32), ``labels.bin`` (int64, or float64 for regression: data.encode's exact floats).
"""
import datetime
import glob
import hashlib
import json
import mmap
import os
import shutil
import socket
import struct
import time
import uuid
from importlib import metadata

import numpy as np

from dynabert.data.features import Feature
from dynabert.data.readers import read_examples
from dynabert.data.tasks import get_task
from dynabert.data.tokenizer import TRUNCATION, FastTokenizer, fast_tokenizer
from dynabert.errors import UserError
from dynabert.io_utils import atomic_directory

FORMAT_VERSION = 2  # 2: sources' sizes and mtimes checked at open, hashed on demand; the manifest's own SHA-256
MANIFEST = "manifest.json"
ARRAYS = ("ids", "offsets", "segment_a", "lengths", "labels")
_CHUNK_ROWS = 16384  # rows tokenized per call: bounds the builder's transient memory
_HASH_BLOCK = 1 << 20


def prepare(task, split: str, source, *, tokenizer, max_seq_len: int, cache_dir, extra_files=(), limit=None,
            log=print, name: str = "", verify: bool = False) -> "CachedSplit":
    """The cache of one split (built if missing or stale), opened. See the module docstring.

    ``tokenizer`` is the PaddleNLP tokenizer whose ids the cache holds (``model.pretrained.load_tokenizer``);
    ``extra_files`` (train only) are paths or globs in the format of the task's training file, appended in
    order. Files are read with the task's reader (``readers.read_examples``: GLUE's TSV or custom data's).
    ``name``: the cache's directory name (default ``<task>.<split>``; an augmented corpus is cached apart).
    ``verify``: hash every source file and array against the manifest (the module docstring says when only
    this finds a change), rebuild what differs, and log what was checked."""
    spec = get_task(task)
    extra = expand_files(extra_files)
    if extra and split != "train":
        raise ValueError(f"extra_files are training files; split is {split!r}")
    files = [os.path.abspath(os.fspath(source))] + extra
    fast = tokenizer if isinstance(tokenizer, FastTokenizer) else fast_tokenizer(tokenizer)
    # A GLUE task's name; custom data's columns, labels and format too (the same bytes may read differently).
    fingerprint = _fingerprint(spec.identity(), split, files, fast, max_seq_len, limit)
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"corpus cache directory {cache_dir}: cannot create it: {e.strerror or e}") from None
    target = os.path.join(os.path.abspath(os.fspath(cache_dir)), name or f"{spec.cache_prefix}.{split}")
    lock_path = target + ".lock"
    if not verify:
        with _FileLock(lock_path, exclusive=False, log=log):
            manifest, problem, _ = _check(target, fingerprint)
            if problem is None:
                return CachedSplit(target, manifest)
    with _FileLock(lock_path, exclusive=True, log=log):
        # another process may have built it, or recorded a touched file's time, meanwhile
        manifest, problem, touched = _check(target, fingerprint)
        if touched or (verify and problem is None):
            problem = _changed_sources(manifest, files, range(len(files)) if verify else touched) or \
                (_changed_arrays(target, manifest) if verify else None)
        if problem is None:
            if touched:
                _record_times(target, manifest, fingerprint, touched, log)
            if verify:
                log(f"corpus cache {target}: verified: {len(files)} source file(s) and {len(ARRAYS)} arrays match "
                    f"the SHA-256 in its manifest")
            return CachedSplit(target, manifest)
        log(f"corpus cache {target}: building ({problem})")
        _remove_leftovers(target)
        fingerprint = _with_digests(fingerprint, files)
        manifest = _build(target, spec, split, files, fast, max_seq_len, limit, fingerprint)
        return CachedSplit(target, manifest)


class CachedSplit:
    """A tokenized split on disk. ``lengths`` and ``labels`` are memory-mapped arrays; a row becomes Python
    objects only when asked for, read with ``pread``.

    Rows are not read through the maps: the kernel maps the file around each page fault (a whole 2 MiB folio
    per random access on the development machine's Linux 6.x), so random rows read through a map grow a
    rank's resident set toward the file size. ``pread`` copies only the row's bytes; the page cache that
    serves it is shared by all ranks and counts in none. A sampler that scanned ``lengths`` can give those
    pages back with ``drop_pages()``. Files stay readable if the cache is rebuilt meanwhile (open inodes)."""

    def __init__(self, path: str, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.is_regression = manifest["regression"]
        meta = manifest["arrays"]
        self._rows = int(manifest["rows"])
        self._files = {name: open(os.path.join(path, meta[name]["file"]), "rb", buffering=0)
                       for name in ("ids", "offsets", "segment_a", "labels")}
        self._id_dtype = np.dtype(meta["ids"]["dtype"])
        self._label_format = "<d" if self.is_regression else "<q"
        self._maps = {}
        self.lengths = self._map(meta["lengths"])
        self.labels = self._map(meta["labels"])

    def _map(self, meta: dict) -> np.ndarray:
        dtype = np.dtype(meta["dtype"])
        if meta["bytes"] == 0:  # mmap cannot map an empty file
            return np.zeros(0, dtype=dtype)
        with open(os.path.join(self.path, meta["file"]), "rb") as f:
            self._maps[meta["file"]] = mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return np.frombuffer(mm, dtype=dtype, count=meta["length"])

    def __len__(self) -> int:
        return self._rows

    def __getitem__(self, i) -> Feature:
        n = self._rows
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"row {i} of a {n}-row split")
        i %= n
        files, size = self._files, self._id_dtype.itemsize
        start, end = struct.unpack("<qq", os.pread(files["offsets"].fileno(), 16, 8 * i))
        ids = np.frombuffer(os.pread(files["ids"].fileno(), (end - start) * size, start * size),
                            dtype=self._id_dtype).tolist()
        (seg_a,) = struct.unpack("<i", os.pread(files["segment_a"].fileno(), 4, 4 * i))
        (label,) = struct.unpack(self._label_format, os.pread(files["labels"].fileno(), 8, 8 * i))
        return Feature(ids, [0] * seg_a + [1] * (end - start - seg_a), label)

    def rows(self, indices) -> list:
        return [self[i] for i in indices]

    def drop_pages(self) -> None:
        """Unmap the pages of ``lengths``/``labels`` this process touched (they stay in the page cache)."""
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if advice is not None:
            for mm in self._maps.values():
                mm.madvise(advice)

    def close(self) -> None:
        self.lengths = self.labels = None
        for f in self._files.values():
            f.close()
        for mm in self._maps.values():
            try:
                mm.close()
            except BufferError:  # a caller still holds a view of lengths/labels; the GC unmaps it later
                pass
        self._files, self._maps = {}, {}


def open_cache(path: str, verify: bool = False) -> CachedSplit:
    """Open a cache directory after checking its manifest and its arrays' sizes (``verify``: and their
    SHA-256) against the manifest; the source files are not looked at."""
    manifest, problem, _ = _check(path, None)
    if problem is None and verify:
        problem = _changed_arrays(path, manifest)
    if problem is not None:
        raise UserError(f"corpus cache {path}: {problem}")
    return CachedSplit(path, manifest)


# ----------------------------------------------------------------------------------------------
# fingerprint and verification
# ----------------------------------------------------------------------------------------------


def expand_files(patterns) -> list:
    """Paths and globs -> existing files, in order (a glob's matches sorted); one-line errors."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    files = []
    for pattern in patterns:
        pattern = os.path.expanduser(os.fspath(pattern))
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
            if not matches:
                raise UserError(f"train file pattern {pattern!r} matches no file")
            files.extend(os.path.abspath(p) for p in matches)
        elif not os.path.isfile(pattern):
            raise UserError(f"{pattern}: no such file (listed as an extra training file)")
        else:
            files.append(os.path.abspath(pattern))
    return files


def _file_digest(path: str) -> tuple:
    digest, size = hashlib.sha256(), 0
    try:
        with open(path, "rb") as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
                size += len(block)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    return digest.hexdigest(), size


def _source_stat(path: str) -> dict:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    return {"name": os.path.basename(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _fingerprint(task: str, split: str, files, fast: FastTokenizer, max_seq_len: int, limit) -> dict:
    if max_seq_len < 3:
        raise ValueError(f"max_seq_len must be at least 3 ([CLS] x [SEP]), got {max_seq_len}")
    sources = [_source_stat(path) for path in files]  # no content read: the builder adds the SHA-256
    return {"format_version": FORMAT_VERSION, "task": task, "split": split, "sources": sources, "limit": limit,
            "max_seq_len": int(max_seq_len), "truncation": TRUNCATION, "tokenizer": fast.settings(),
            "versions": {dist: _version(dist) for dist in ("paddlenlp", "tokenizers")}}


def _with_digests(fingerprint: dict, files) -> dict:
    """The fingerprint with each source's SHA-256 (read after its size and time were taken, so a file that
    changes meanwhile is found changed at the next open)."""
    sources = [dict(source, sha256=_file_digest(path)[0]) for source, path in zip(fingerprint["sources"], files)]
    return dict(fingerprint, sources=sources)


def _version(dist: str):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _manifest_digest(manifest: dict) -> str:
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _write_manifest(folder: str, manifest: dict) -> None:
    """Write ``manifest.json`` with its own SHA-256, atomically (a temporary file renamed over it)."""
    manifest["manifest_sha256"] = _manifest_digest(json.loads(json.dumps(manifest)))  # as a reader will parse it
    path = os.path.join(folder, MANIFEST)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(manifest, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check(path: str, fingerprint):
    """The cheap check, in time independent of the corpus size: no source or array content is read.

    (manifest, None, []) if the cache at ``path`` is complete, its manifest intact, its arrays of the recorded
    sizes and (unless ``fingerprint`` is None) built from the same inputs, by name, size and modification
    time. (manifest, why, touched) if it is so except that the sources at indices ``touched`` have other
    modification times (same sizes): hashing them decides. Else (None, why not, [])."""
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.exists(manifest_path):
        return None, "no cache yet" if not os.path.exists(path) else "no manifest", []
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            return None, f"cache format version {version}, this code's is {FORMAT_VERSION}", []
        if manifest.get("manifest_sha256") != _manifest_digest(manifest):
            return None, "manifest.json does not match its own SHA-256 (edited or damaged)", []
        old = manifest["fingerprint"]
        arrays = manifest["arrays"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return None, f"manifest unreadable: {type(e).__name__}: {e}", []
    touched = []
    if fingerprint is not None:
        problem = _difference(old, fingerprint)
        if problem is not None:
            return None, problem, []
        touched = [k for k, (before, now) in enumerate(zip(old["sources"], fingerprint["sources"]))
                   if before.get("mtime_ns") != now["mtime_ns"]]
    for name in ARRAYS:
        meta = arrays.get(name)
        if not isinstance(meta, dict):
            return None, f"manifest lists no {name} array", []
        try:
            size = os.path.getsize(os.path.join(path, meta["file"]))
        except OSError:
            return None, f"{meta['file']} is missing", []
        if size != meta["bytes"]:
            return None, f"{meta['file']} has {size} bytes, the manifest says {meta['bytes']} (truncated?)", []
    if touched:
        names = ", ".join(fingerprint["sources"][k]["name"] for k in touched)
        return manifest, f"modification time of {names} changed, size did not", touched
    return manifest, None, []


def _changed_sources(manifest: dict, files, indices):
    """Why the sources at ``indices`` differ from the SHA-256 the manifest records, or None (reads them)."""
    for k in indices:
        recorded = manifest["fingerprint"]["sources"][k]
        sha, size = _file_digest(files[k])
        if sha != recorded.get("sha256"):
            return (f"source {recorded['name']} changed (sha256 {str(recorded.get('sha256'))[:12]}... -> "
                    f"{sha[:12]}..., {recorded.get('bytes')} -> {size} bytes)")
    return None


def _changed_arrays(path: str, manifest: dict):
    """Why an array differs from the SHA-256 the manifest records, or None (reads every array)."""
    for name in ARRAYS:
        meta = manifest["arrays"][name]
        if _file_digest(os.path.join(path, meta["file"]))[0] != meta["sha256"]:
            return f"{meta['file']} does not match its SHA-256 in the manifest (corrupted)"
    return None


def _record_times(path: str, manifest: dict, fingerprint: dict, touched, log) -> None:
    """Sources at ``touched`` were hashed and are unchanged: record their new modification times, so the
    next open is cheap again. Under the exclusive lock; a cache directory we may not write is used as is."""
    names = ", ".join(fingerprint["sources"][k]["name"] for k in touched)
    for k in touched:
        manifest["fingerprint"]["sources"][k]["mtime_ns"] = fingerprint["sources"][k]["mtime_ns"]
    try:
        _write_manifest(path, manifest)
        recorded = "new time recorded"
    except OSError as e:
        recorded = f"new time not recorded: {e.strerror or e}"
    log(f"corpus cache {path}: {names}: modification time changed, contents did not (same SHA-256): reused, "
        f"{recorded}")


def _difference(old: dict, new: dict):
    """The first input that changed, in one phrase (sources by name and size; their times are compared by
    ``_check``), or None."""
    old_sources, new_sources = old.get("sources") or [], new["sources"]
    if [s.get("name") for s in old_sources] != [s["name"] for s in new_sources]:
        return (f"source files changed: {', '.join(s.get('name', '?') for s in old_sources)} -> "
                f"{', '.join(s['name'] for s in new_sources)}")
    for before, after in zip(old_sources, new_sources):
        if before.get("bytes") != after["bytes"]:
            return f"source {after['name']} changed ({before.get('bytes')} -> {after['bytes']} bytes)"
    old_tok, new_tok = old.get("tokenizer") or {}, new["tokenizer"]
    if old_tok.get("vocab_sha256") != new_tok["vocab_sha256"]:
        return "vocabulary changed"
    for key, value in new_tok.items():
        if old_tok.get(key) != value:
            return f"tokenizer {key} {old_tok.get(key)!r} -> {value!r}"
    for key in {**old, **new}:
        if key != "sources" and old.get(key) != new.get(key):
            return f"{key} {old.get(key)!r} -> {new.get(key)!r}"
    return None


# ----------------------------------------------------------------------------------------------
# building
# ----------------------------------------------------------------------------------------------


class _ArrayWriter:
    """Appends to one raw array file, hashing as it writes (no second read)."""

    def __init__(self, folder: str, name: str, dtype):
        self.name, self.dtype = name, np.dtype(dtype).newbyteorder("<")
        self.file = f"{name}.bin"
        self._f = open(os.path.join(folder, self.file), "wb")
        self._sha = hashlib.sha256()
        self.length = 0

    def write(self, values) -> None:
        data = np.ascontiguousarray(values, dtype=self.dtype).tobytes()
        self._f.write(data)
        self._sha.update(data)
        self.length += len(values)

    def close(self) -> dict:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return {"file": self.file, "dtype": self.dtype.str, "length": self.length,
                "bytes": self.length * self.dtype.itemsize, "sha256": self._sha.hexdigest()}


def _build(target, spec, split, files, fast, max_seq_len, limit, fingerprint) -> dict:
    started = time.perf_counter()
    routes_before = dict(fast.route_counts)
    id_dtype = np.uint16 if fast.vocab_size < 65536 else np.int32
    label_dtype = np.float64 if spec.is_regression else np.int64
    rows, tokens, any_pair = 0, 0, False
    with atomic_directory(target) as tmp:
        writers = {name: _ArrayWriter(tmp, name, dtype) for name, dtype in (
            ("ids", id_dtype), ("offsets", np.int64), ("segment_a", np.int32), ("lengths", np.int32),
            ("labels", label_dtype))}
        writers["offsets"].write(np.zeros(1, np.int64))
        for index, path in enumerate(files):
            remaining = None if limit is None else limit - rows
            if remaining is not None and remaining <= 0:
                break
            examples = read_examples(path, spec, split if index == 0 else "train", limit=remaining)
            for start in range(0, len(examples), _CHUNK_ROWS):
                chunk = examples[start:start + _CHUNK_ROWS]
                encoded = fast.encode(chunk, max_seq_len)
                writers["ids"].write(encoded.ids)
                writers["offsets"].write(encoded.offsets[1:] + tokens)
                writers["segment_a"].write(encoded.segment_a)
                writers["lengths"].write(encoded.lengths)
                writers["labels"].write(np.fromiter((e.label for e in chunk), dtype=label_dtype, count=len(chunk)))
                any_pair = any_pair or any(e.text_b is not None for e in chunk)
                rows += len(chunk)
                tokens += len(encoded.ids)
            del examples
        arrays = {name: writer.close() for name, writer in writers.items()}
        routes = {k: v - routes_before.get(k, 0) for k, v in fast.route_counts.items()}
        build = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                 "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "seconds": round(time.perf_counter() - started, 3),
                 "routes": routes,  # texts tokenized by each route of the FastTokenizer
                 "unsupported_tokenizer": fast.unsupported or None}
        # "sources" says where the rows came from; paths are informational, not part of the fingerprint.
        manifest = {"format_version": FORMAT_VERSION, "fingerprint": fingerprint, "rows": rows, "tokens": tokens,
                    "pair": any_pair, "regression": spec.is_regression, "arrays": arrays, "sources": files,
                    "build": build}
        _write_manifest(tmp, manifest)
    return manifest


def _remove_leftovers(target: str) -> None:
    """Temporary and set-aside directories of builders that died (we hold the exclusive lock: no live one)."""
    parent, base = os.path.split(target)
    for pattern in (f".{base}.tmp-*", f".{base}.old-*"):
        for leftover in glob.glob(os.path.join(glob.escape(parent), pattern)):
            shutil.rmtree(leftover, ignore_errors=True)


class _FileLock:
    """An fcntl (POSIX) lock on a file that is never deleted; blocking, released when the process dies.

    POSIX locks also work between nodes on NFS. They belong to the process: do not hold one cache's lock
    from two threads of one process."""

    def __init__(self, path: str, exclusive: bool, log):
        self.path, self.exclusive, self.log = path, exclusive, log

    def __enter__(self):
        import fcntl

        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:
            if self.exclusive:
                raise UserError(f"{self.path}: no permission to write the cache lock (needed to build)") from None
            self._fd = os.open(self.path, os.O_RDONLY)  # a read lock is enough to use someone else's cache
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        try:
            fcntl.lockf(self._fd, mode | fcntl.LOCK_NB)
        except OSError:  # held by another process: say so once, then block in the kernel until it is free
            self.log(f"corpus cache {self.path[:-len('.lock')]}: waiting for another process (building or "
                     f"checking it)")
            fcntl.lockf(self._fd, mode)
        return self

    def __exit__(self, *exc):
        import fcntl

        try:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
