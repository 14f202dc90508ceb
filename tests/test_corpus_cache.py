"""The corpus cache: rows equal data.encode's, the fingerprint decides reuse, damaged files are rebuilt, and
processes preparing one cache at once end with one build and one valid cache. A warm open reads no file
content (sizes, modification times and the manifest's own SHA-256); ``verify`` hashes everything."""
import fcntl
import hashlib
import json
import multiprocessing
import os
import queue
import shutil
import signal
import types
import warnings

import numpy as np
import pytest

from dynabert.data import cache as cache_module
from dynabert.data.cache import ARRAYS, open_cache, prepare
from dynabert.data.features import encode
from dynabert.data.readers import read_glue_tsv
from dynabert.errors import UserError

SENTENCES = ["a gripping , funny film .", "Café naïve résumé", "it 's not bad at all", "我爱北京", "the plot",
             "x" * 120, "“quoted” — dash", "", "one two three four five six seven eight nine ten eleven"]


@pytest.fixture(scope="module")
def tokenizer():
    from dynabert.model.pretrained import default_model_dir, load_tokenizer

    return load_tokenizer(default_model_dir())


def write_sst2(path, rows):
    lines = ["sentence\tlabel"] + [f"{text}\t{label}" for text, label in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def sst2_rows(n, seed=0):
    rng = np.random.RandomState(seed)
    return [(" ".join(SENTENCES[j] for j in rng.randint(0, len(SENTENCES), size=1 + i % 3)), int(rng.randint(2)))
            for i in range(n)]


def reference(path, task, split, tokenizer, max_seq_len, limit=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return encode(read_glue_tsv(path, task, split, limit=limit), tokenizer, max_seq_len)


def assert_rows_equal(cached, features, rows=None):
    assert len(cached) == (len(features) if rows is None else rows)
    for i, feature in enumerate(features):
        assert cached[i] == feature, f"row {i}"
    assert cached.lengths[:len(features)].tolist() == [len(f.input_ids) for f in features]
    assert cached.labels[:len(features)].tolist() == [f.label for f in features]


def builds(lines):
    return [line for line in lines if ": building (" in line]


def build_id(cached):
    return cached.manifest["build"]["id"]


def set_mtime(path, mtime_ns):
    os.utime(path, ns=(os.stat(path).st_atime_ns, mtime_ns))


def edit_in_place(path, old: bytes, new: bytes):
    """Replace ``old`` by ``new`` (same length) in the file at ``path``; returns its mtime before."""
    assert len(old) == len(new)
    mtime = os.stat(path).st_mtime_ns
    data = open(path, "rb").read()
    assert old in data
    with open(path, "wb") as f:
        f.write(data.replace(old, new, 1))
    return mtime


class _CountedFile:
    """A file object whose reads are recorded (bytes per path); everything else is the file's."""

    def __init__(self, f, path, reads):
        self._f, self._path, self._reads = f, path, reads

    def _count(self, data):
        self._reads.append((self._path, len(data)))
        return data

    def read(self, *args):
        return self._count(self._f.read(*args))

    def readline(self, *args):
        return self._count(self._f.readline(*args))

    def readinto(self, buffer):
        n = self._f.readinto(buffer)
        self._reads.append((self._path, n or 0))
        return n

    def __iter__(self):
        return (self._count(line) for line in self._f)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


@pytest.fixture
def content_reads(monkeypatch):
    """What the cache module reads: ``reads`` [(path, bytes)] through its ``open``, and ``hashed`` bytes
    through its ``hashlib`` (the module's own names are replaced, nothing global)."""
    record = types.SimpleNamespace(reads=[], hashed=0)

    def counted_open(file, *args, **kwargs):
        return _CountedFile(open(file, *args, **kwargs), os.fspath(file), record.reads)

    class CountedHash:
        def __init__(self, data=b""):
            self._h = hashlib.sha256()
            self.update(data)

        def update(self, data):
            record.hashed += len(data)
            self._h.update(data)

        def hexdigest(self):
            return self._h.hexdigest()

    monkeypatch.setattr(cache_module, "open", counted_open, raising=False)
    monkeypatch.setattr(cache_module, "hashlib", types.SimpleNamespace(sha256=CountedHash))
    return record


# ------------------------------------------------------------------------------------------------
# rows
# ------------------------------------------------------------------------------------------------


def test_sst2_dev_rows_equal_data_encode(glue_dir, tokenizer, tmp_path):
    source = os.path.join(glue_dir, "SST-2", "dev.tsv")
    cached = prepare("sst-2", "dev", source, tokenizer=tokenizer, max_seq_len=128, cache_dir=tmp_path, log=print)
    assert_rows_equal(cached, reference(source, "sst-2", "dev", tokenizer, 128))
    assert cached.manifest["arrays"]["ids"]["dtype"] == "<u2"  # 30,522 entries < 65,536
    assert cached.lengths.dtype == np.int32 and cached.labels.dtype == np.int64
    assert isinstance(cached[0].label, int)


def test_pair_task_rows_equal_data_encode_with_truncation(tokenizer, tmp_path):
    rng = np.random.RandomState(1)
    lines = ["index\tsentence1\tsentence2\tlabel"]
    for i in range(300):
        a, b = (" ".join(SENTENCES[j] for j in rng.randint(0, len(SENTENCES), size=rng.randint(1, 4)))
                for _ in range(2))
        lines.append(f"{i}\t{a}\t{b}\t{('entailment', 'not_entailment')[i % 2]}")
    source = tmp_path / "train.tsv"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for max_seq_len in (7, 12, 128):
        cached = prepare("rte", "train", str(source), tokenizer=tokenizer, max_seq_len=max_seq_len,
                         cache_dir=tmp_path / "cache", log=print)
        assert_rows_equal(cached, reference(str(source), "rte", "train", tokenizer, max_seq_len))
        assert 1 in cached[0].token_type_ids


def test_regression_labels_are_the_exact_floats(tokenizer, tmp_path):
    source = tmp_path / "dev.tsv"
    source.write_text("sentence1\tsentence2\tscore\na man\ta woman\t3.8\nthe plot\tit 's bad\t0.123456789\n")
    cached = prepare("sts-b", "dev", str(source), tokenizer=tokenizer, max_seq_len=16, cache_dir=tmp_path, log=print)
    assert [cached[i].label for i in range(2)] == [3.8, 0.123456789]
    assert_rows_equal(cached, reference(str(source), "sts-b", "dev", tokenizer, 16))


def test_index_errors_and_negative_rows(tokenizer, tmp_path):
    source = write_sst2(tmp_path / "train.tsv", sst2_rows(5))
    cached = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path, log=print)
    assert cached[-1] == cached[4]
    with pytest.raises(IndexError):
        cached[5]


# ------------------------------------------------------------------------------------------------
# fingerprint: reuse and rebuild
# ------------------------------------------------------------------------------------------------


def test_unchanged_inputs_reuse_the_cache(tokenizer, tmp_path):
    source = write_sst2(tmp_path / "train.tsv", sst2_rows(50))
    lines = []
    first = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path / "c",
                    log=lines.append)
    second = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path / "c",
                     log=lines.append)
    assert len(builds(lines)) == 1 and "no cache yet" in builds(lines)[0]
    assert build_id(first) == build_id(second)


@pytest.mark.parametrize("edit", ["other size", "same size, other mtime"])
def test_an_edited_source_rebuilds_saying_why(tokenizer, tmp_path, edit):
    source = tmp_path / "train.tsv"
    write_sst2(source, sst2_rows(50))
    first = prepare("sst-2", "train", str(source), tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path, log=print)
    size, mtime = os.path.getsize(source), os.stat(source).st_mtime_ns
    if edit == "other size":  # the time put back: the size alone tells
        source.write_bytes(source.read_bytes() + b"one more row\t1\n")
        set_mtime(source, mtime)
        expected = f"source train.tsv changed ({size} -> {size + 15} bytes)"
    else:  # "gripping" -> "tripping": one byte; the time moved explicitly (no reliance on the clock's tick)
        edit_in_place(source, b"gripping", b"tripping")
        set_mtime(source, mtime + 10**9)
        expected = "source train.tsv changed (sha256 "
    lines = []
    second = prepare("sst-2", "train", str(source), tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path,
                     log=lines.append)
    assert len(builds(lines)) == 1 and expected in builds(lines)[0], lines
    assert build_id(first) != build_id(second)
    assert_rows_equal(second, reference(str(source), "sst-2", "train", tokenizer, 32))


def test_other_max_seq_len_rebuilds(tokenizer, tmp_path):
    source = write_sst2(tmp_path / "train.tsv", sst2_rows(50))
    prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path, log=print)
    lines = []
    cached = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=8, cache_dir=tmp_path,
                     log=lines.append)
    assert len(builds(lines)) == 1 and "max_seq_len 32 -> 8" in builds(lines)[0]
    assert_rows_equal(cached, reference(source, "sst-2", "train", tokenizer, 8))


def test_other_vocabulary_rebuilds(tokenizer, tmp_path):
    from paddlenlp.transformers import BertTokenizer

    from dynabert.model.pretrained import default_model_dir

    vocab = open(os.path.join(default_model_dir(), "vocab.txt"), encoding="utf-8").read().split("\n")
    film, funny = vocab.index("film"), vocab.index("funny")
    vocab[film], vocab[funny] = vocab[funny], vocab[film]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab), encoding="utf-8")
    other = BertTokenizer(vocab_file=str(tmp_path / "vocab.txt"))
    source = write_sst2(tmp_path / "train.tsv", sst2_rows(50))
    prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path, log=print)
    lines = []
    cached = prepare("sst-2", "train", source, tokenizer=other, max_seq_len=32, cache_dir=tmp_path, log=lines.append)
    assert len(builds(lines)) == 1 and "vocabulary changed" in builds(lines)[0]
    assert_rows_equal(cached, reference(source, "sst-2", "train", other, 32))
    assert reference(source, "sst-2", "train", other, 32) != reference(source, "sst-2", "train", tokenizer, 32)


@pytest.mark.parametrize("array", ARRAYS)
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_array_is_detected_and_rebuilt(tokenizer, tmp_path, array, damage):
    """A truncated array is seen at every open (its size); one corrupted in place with its size unchanged
    only by ``verify`` (a warm open reads no array content: the documented limit)."""
    source = write_sst2(tmp_path / "train.tsv", sst2_rows(40))
    first = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path, log=print)
    first.close()
    path = os.path.join(first.path, f"{array}.bin")
    data = bytearray(open(path, "rb").read())
    if damage == "truncate":
        data = data[:-1]
    else:
        data[len(data) // 2] ^= 0x01
    with open(path, "wb") as f:
        f.write(bytes(data))
    if damage == "flip":
        lines = []
        stale = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path,
                        log=lines.append)
        assert lines == [] and build_id(stale) == build_id(first)  # not seen by the cheap check
        stale.close()
        open_cache(first.path).close()
    with pytest.raises(UserError, match=f"{array}.bin"):
        open_cache(first.path, verify=True)  # never read as data
    lines = []
    cached = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path,
                     log=lines.append, verify=damage == "flip")
    expected = "truncated" if damage == "truncate" else "corrupted"
    assert len(builds(lines)) == 1 and f"{array}.bin" in builds(lines)[0] and expected in builds(lines)[0]
    assert_rows_equal(cached, reference(source, "sst-2", "train", tokenizer, 32))


def test_missing_manifest_is_rebuilt(tokenizer, tmp_path):
    source = write_sst2(tmp_path / "train.tsv", sst2_rows(10))
    first = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path, log=print)
    os.unlink(os.path.join(first.path, "manifest.json"))
    lines = []
    prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path, log=lines.append)
    assert len(builds(lines)) == 1 and "no manifest" in builds(lines)[0]


# ------------------------------------------------------------------------------------------------
# the warm open: sizes, times and the manifest's own checksum; verify hashes everything
# ------------------------------------------------------------------------------------------------


def test_a_warm_open_reads_no_file_content(tokenizer, tmp_path, content_reads):
    source = write_sst2(tmp_path / "train.tsv", sst2_rows(2000))
    first = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path, log=print)
    manifest = os.path.join(first.path, "manifest.json")
    content_reads.reads.clear()
    content_reads.hashed = 0
    lines = []
    warm = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path,
                   log=lines.append)
    assert lines == [] and build_id(warm) == build_id(first)
    assert {path for path, _ in content_reads.reads} == {manifest}  # no source file, no array
    assert 0 < content_reads.hashed <= os.path.getsize(manifest)  # the manifest's own checksum only
    assert warm[1999] == first[1999]  # rows are still read on demand (pread, not the module's open)


def test_a_touched_identical_source_is_reused_and_its_new_time_recorded(tokenizer, tmp_path, content_reads):
    """Chosen behaviour: a new modification time with the same size hashes that one file once; the same
    SHA-256 keeps the cache (no re-tokenizing for a touch or a copy) and the manifest records the new time."""
    source = write_sst2(tmp_path / "train.tsv", sst2_rows(50))
    first = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path, log=print)
    new_time = os.stat(source).st_mtime_ns + 7 * 10**9
    set_mtime(source, new_time)
    lines = []
    second = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path,
                     log=lines.append)
    assert build_id(second) == build_id(first) and builds(lines) == []
    assert len(lines) == 1 and "train.tsv: modification time changed, contents did not" in lines[0], lines
    assert "new time recorded" in lines[0]
    manifest = json.load(open(os.path.join(first.path, "manifest.json")))
    assert manifest["fingerprint"]["sources"][0]["mtime_ns"] == new_time
    content_reads.reads.clear()
    lines = []
    third = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path,
                    log=lines.append)
    assert lines == [] and build_id(third) == build_id(first)
    assert all(os.path.basename(path) == "manifest.json" for path, _ in content_reads.reads)  # cheap again


def test_a_source_replaced_with_the_same_size_and_time_is_found_only_by_verify(tokenizer, tmp_path):
    """The documented limit of the cheap check, and the on-demand check that finds it."""
    source = tmp_path / "train.tsv"
    write_sst2(source, sst2_rows(50))
    first = prepare("sst-2", "train", str(source), tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path, log=print)
    mtime = edit_in_place(source, b"gripping", b"tripping")
    set_mtime(source, mtime)
    lines = []
    stale = prepare("sst-2", "train", str(source), tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path,
                    log=lines.append)
    assert lines == [] and build_id(stale) == build_id(first)
    verified = prepare("sst-2", "train", str(source), tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path,
                       log=lines.append, verify=True)
    assert len(builds(lines)) == 1 and "source train.tsv changed (sha256 " in builds(lines)[0], lines
    assert_rows_equal(verified, reference(str(source), "sst-2", "train", tokenizer, 32))
    lines = []
    prepare("sst-2", "train", str(source), tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path, log=lines.append,
            verify=True)
    assert len(lines) == 1 and "verified: 1 source file(s) and 5 arrays match" in lines[0], lines


@pytest.mark.parametrize("edit", ["rows", "array size", "not json"])
def test_an_edited_manifest_is_rebuilt(tokenizer, tmp_path, edit):
    source = write_sst2(tmp_path / "train.tsv", sst2_rows(30))
    first = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path, log=print)
    path = os.path.join(first.path, "manifest.json")
    manifest = json.load(open(path))
    if edit == "rows":
        manifest["rows"] -= 1
    elif edit == "array size":  # a manifest made to agree with a truncated array
        manifest["arrays"]["lengths"]["bytes"] -= 4
    text = json.dumps(manifest, indent=1) if edit != "not json" else "{\"format_version\": 2, "
    with open(path, "w") as f:
        f.write(text)
    lines = []
    cached = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path,
                     log=lines.append)
    expected = "manifest unreadable" if edit == "not json" else "manifest.json does not match its own SHA-256"
    assert len(builds(lines)) == 1 and expected in builds(lines)[0], lines
    assert_rows_equal(cached, reference(source, "sst-2", "train", tokenizer, 32))


def test_a_cache_of_another_format_version_is_rebuilt_once(tokenizer, tmp_path):
    source = write_sst2(tmp_path / "train.tsv", sst2_rows(30))
    first = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path, log=print)
    path = os.path.join(first.path, "manifest.json")
    manifest = json.load(open(path))
    # as format 1 wrote it: no checksum of its own, sources fingerprinted by SHA-256 and size only
    del manifest["manifest_sha256"]
    manifest["format_version"] = manifest["fingerprint"]["format_version"] = 1
    for entry in manifest["fingerprint"]["sources"]:
        del entry["mtime_ns"]
    with open(path, "w") as f:
        f.write(json.dumps(manifest, indent=1))
    lines = []
    for _ in range(2):
        prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path, log=lines.append)
    assert len(builds(lines)) == 1, lines
    assert f"cache format version 1, this code's is {cache_module.FORMAT_VERSION}" in builds(lines)[0]


def test_dynabert_prepare_verify_finds_what_the_cheap_check_cannot(tokenizer, tmp_path, tiny_model_dir, capsys):
    """``dynabert-prepare --verify``: a cache array corrupted in place (same size) is found, rebuilt and
    named; without --verify it is not (the documented limit); a sound cache is reported verified."""
    from launcher import prepare_cli
    from tests.conftest import ROOT

    (tmp_path / "glue" / "SST-2").mkdir(parents=True)
    write_sst2(tmp_path / "glue" / "SST-2" / "train.tsv", sst2_rows(120, seed=5))
    write_sst2(tmp_path / "glue" / "SST-2" / "dev.tsv", sst2_rows(20, seed=6))
    argv = ["--config", os.path.join(ROOT, "configs", "tiny.yaml"), "--set", f"model.name_or_path={tiny_model_dir}",
            "--set", f"data.glue_dir={tmp_path / 'glue'}", "--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--set", f"run.out_dir={tmp_path / 'run'}", "--set", "data.select_on=dev"]
    assert prepare_cli.main(argv) == 0
    assert len(builds(capsys.readouterr().out.splitlines())) == 2  # train and dev
    ids = tmp_path / "cache" / "sst-2.train" / "ids.bin"
    data = bytearray(ids.read_bytes())
    data[len(data) // 3] ^= 0x04
    ids.write_bytes(bytes(data))
    assert prepare_cli.main(argv) == 0
    assert builds(capsys.readouterr().out.splitlines()) == []
    assert prepare_cli.main(argv + ["--verify"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(builds(out)) == 1, out
    assert "sst-2.train: building (ids.bin does not match its SHA-256 in the manifest (corrupted))" in builds(out)[0]
    assert any("sst-2.dev: verified: 1 source file(s) and 5 arrays match" in line for line in out), out
    assert any(line.startswith("prepared and verified in ") for line in out), out
    assert prepare_cli.main(argv + ["--verify"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert builds(out) == [] and sum(": verified: " in line for line in out) == 2, out


# ------------------------------------------------------------------------------------------------
# extra training files and limits
# ------------------------------------------------------------------------------------------------


def test_extra_train_files_are_appended_in_order(tokenizer, tmp_path):
    source = write_sst2(tmp_path / "train.tsv", sst2_rows(20, seed=1))
    (tmp_path / "aug").mkdir()
    extra_b = write_sst2(tmp_path / "aug" / "b.tsv", sst2_rows(7, seed=3))
    extra_a = write_sst2(tmp_path / "aug" / "a.tsv", sst2_rows(5, seed=2))
    lines = []
    cached = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path / "c",
                     extra_files=[str(tmp_path / "aug" / "*.tsv")], log=lines.append)
    expected = sum((reference(p, "sst-2", "train", tokenizer, 32) for p in (source, extra_a, extra_b)), [])
    assert_rows_equal(cached, expected)
    # The extra files are part of the fingerprint: one more file rebuilds.
    write_sst2(tmp_path / "aug" / "c.tsv", sst2_rows(3, seed=4))
    cached = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path / "c",
                     extra_files=[str(tmp_path / "aug" / "*.tsv")], log=lines.append)
    assert len(cached) == 35
    assert len(builds(lines)) == 2 and "source files changed" in builds(lines)[1]


def test_malformed_row_in_extra_file_names_file_and_line(tokenizer, tmp_path):
    source = write_sst2(tmp_path / "train.tsv", sst2_rows(5))
    extra = tmp_path / "aug.tsv"
    extra.write_text("sentence\tlabel\ngood row\t1\nno label field\n", encoding="utf-8")
    with pytest.raises(UserError, match=f"{extra}:3: expected 2 tab-separated fields"):
        prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path,
                extra_files=[str(extra)], log=print)
    assert not os.path.exists(tmp_path / "sst-2.train")  # nothing half-built left behind


def test_extra_file_pattern_matching_nothing_is_an_error(tokenizer, tmp_path):
    source = write_sst2(tmp_path / "train.tsv", sst2_rows(5))
    with pytest.raises(UserError, match="matches no file"):
        prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path,
                extra_files=[str(tmp_path / "nothing*.tsv")], log=print)


def test_limit_keeps_the_first_rows_over_all_files(tokenizer, tmp_path):
    source = write_sst2(tmp_path / "train.tsv", sst2_rows(10, seed=1))
    extra = write_sst2(tmp_path / "extra.tsv", sst2_rows(10, seed=2))
    cached = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=32, cache_dir=tmp_path,
                     extra_files=[extra], limit=13, log=print)
    expected = reference(source, "sst-2", "train", tokenizer, 32) + reference(extra, "sst-2", "train", tokenizer, 32)
    assert_rows_equal(cached, expected[:13])


# ------------------------------------------------------------------------------------------------
# several processes (spawned: each loads its own tokenizer, as a rank would)
# ------------------------------------------------------------------------------------------------


def _prepare_in_child(ready, start, lines, result_path, source, cache_dir):
    from dynabert.model.pretrained import default_model_dir, load_tokenizer

    tokenizer = load_tokenizer(default_model_dir())
    ready.set()
    if not start.wait(timeout=300):
        raise RuntimeError("never told to start")
    cached = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=64, cache_dir=cache_dir,
                     log=lines.put)
    rows = [cached[i] for i in (0, len(cached) - 1)]
    with open(result_path, "w") as f:
        json.dump({"build": build_id(cached), "rows": len(cached),
                   "edge_rows": [[r.input_ids, r.token_type_ids, r.label] for r in rows]}, f)


def _start_children(ctx, count, source, cache_dir, tmp_path, start=None):
    start = start or ctx.Event()
    lines = ctx.Queue()
    children = []
    for k in range(count):
        ready = ctx.Event()
        child = ctx.Process(target=_prepare_in_child,
                            args=(ready, start, lines, str(tmp_path / f"result{k}.json"), source, cache_dir))
        child.start()
        children.append((child, ready))
    for _, ready in children:
        assert ready.wait(timeout=300), "child did not load its tokenizer"
    return [c for c, _ in children], start, lines


def _drain(lines):
    out = []
    while True:
        try:
            out.append(lines.get_nowait())
        except queue.Empty:
            return out


@pytest.mark.dist
def test_two_processes_preparing_at_once_build_once(tokenizer, tmp_path):
    source = write_sst2(tmp_path / "train.tsv", sst2_rows(40000))  # a build long enough for the two to overlap
    cache_dir = str(tmp_path / "cache")
    ctx = multiprocessing.get_context("spawn")
    children, start, lines = _start_children(ctx, 2, source, cache_dir, tmp_path)
    start.set()
    for child in children:
        child.join(timeout=600)
        assert child.exitcode == 0
    results = [json.load(open(tmp_path / f"result{k}.json")) for k in range(2)]
    assert len(builds(_drain(lines))) == 1
    assert results[0] == results[1]  # the same build, the same rows
    cached = open_cache(os.path.join(cache_dir, "sst-2.train"))
    assert build_id(cached) == results[0]["build"]
    assert_rows_equal(cached, reference(source, "sst-2", "train", tokenizer, 64, limit=2000), rows=40000)
    assert sorted(os.listdir(cache_dir)) == ["sst-2.train", "sst-2.train.lock"]


@pytest.mark.dist
def test_a_process_waits_on_the_lock_instead_of_building(tokenizer, tmp_path):
    source = write_sst2(tmp_path / "train.tsv", sst2_rows(100))
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    ctx = multiprocessing.get_context("spawn")
    holder = os.open(cache_dir / "sst-2.train.lock", os.O_RDWR | os.O_CREAT)
    fcntl.lockf(holder, fcntl.LOCK_EX)  # as a builder in another job would
    try:
        (child,), start, lines = _start_children(ctx, 1, source, str(cache_dir), tmp_path)
        start.set()
        line = lines.get(timeout=300)
        assert "waiting for another process" in line
        assert child.is_alive() and not os.path.exists(cache_dir / "sst-2.train")
    finally:
        fcntl.lockf(holder, fcntl.LOCK_UN)
        os.close(holder)
    child.join(timeout=300)
    assert child.exitcode == 0
    assert len(builds(_drain(lines))) == 1
    assert_rows_equal(open_cache(str(cache_dir / "sst-2.train")), reference(source, "sst-2", "train", tokenizer, 64))


@pytest.mark.dist
def test_processes_opening_a_touched_source_at_once_hash_it_once(tokenizer, tmp_path):
    """The touched file is hashed and its time recorded by one process (under the build lock); the others
    find the manifest updated, whatever the order they come in (no timing assumed)."""
    source = write_sst2(tmp_path / "train.tsv", sst2_rows(300))
    cache_dir = str(tmp_path / "cache")
    first = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=64, cache_dir=cache_dir, log=print)
    set_mtime(source, os.stat(source).st_mtime_ns + 3 * 10**9)
    ctx = multiprocessing.get_context("spawn")
    children, start, lines = _start_children(ctx, 2, source, cache_dir, tmp_path)
    start.set()
    for child in children:
        child.join(timeout=300)
        assert child.exitcode == 0
    out = _drain(lines)
    assert builds(out) == []
    assert sum("modification time changed, contents did not" in line for line in out) == 1, out
    assert {json.load(open(tmp_path / f"result{k}.json"))["build"] for k in range(2)} == {build_id(first)}


@pytest.mark.dist
def test_builder_killed_midway_leaves_no_half_written_cache(tokenizer, tmp_path):
    source = write_sst2(tmp_path / "train.tsv", sst2_rows(200000))
    cache_dir = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    (child,), start, lines = _start_children(ctx, 1, source, str(cache_dir), tmp_path)
    start.set()
    assert ": building (" in lines.get(timeout=300)
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=60)
    assert child.exitcode == -signal.SIGKILL
    with pytest.raises(UserError):
        open_cache(str(cache_dir / "sst-2.train"))
    out = []
    cached = prepare("sst-2", "train", source, tokenizer=tokenizer, max_seq_len=64, cache_dir=cache_dir, log=out.append)
    assert len(builds(out)) == 1
    assert_rows_equal(cached, reference(source, "sst-2", "train", tokenizer, 64, limit=2000), rows=200000)
    assert sorted(os.listdir(cache_dir)) == ["sst-2.train", "sst-2.train.lock"]  # the dead builder's temp is gone
    shutil.rmtree(cache_dir)
