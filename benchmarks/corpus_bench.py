"""Corpus cache: tokenizing throughput, flat per-rank memory, warm/cold start, size on disk.

    python -m benchmarks.corpus_bench --out DIR [--smoke] [--sizes 100000,1000000,5000000] [--workdir TMP]
    python -m benchmarks.corpus_bench --out DIR --warm-only --tag TAG [--sizes 1000000,5000000] [--warm-reps 3]

1. Throughput on the same rows in the same run, alternated: PaddleNLP ``BertTokenizer`` (``data.encode``)
   vs ``FastBertTokenizer.encode`` (fresh tokenizer each time, so its word cache starts cold) vs the whole
   cache builder (``corpus_cache.prepare`` into an empty directory: hashing, TSV parsing, tokenizing,
   writing). Real SST-2 train ($GLUE_DIR), then sentence pairs.
2. For synthetic pair corpora (RTE format) of each size, generated into a temporary directory from the real
   SST-2 sentences and deleted afterwards: cold preparation time and builder peak RSS (fresh process), cache
   bytes per million rows, and in another fresh process with the cache warm: time from ``prepare`` to the
   first collated batch, and peak RSS (VmHWM) while iterating length-grouped batches (lengths array only,
   rows of each batch materialized). The sampler is GlobalBatches' order (checked equal at the smallest
   size) computed with an int32 permutation: what a rank needs for a flat memory profile.
3. One process building the cache vs two processes building half each plus a merge, on the second size.

``--warm-only`` measures part 2's warm start alone (no throughput, no two-process build): per size, one cold
build, then ``--warm-reps`` fresh processes that each open the warm cache and iterate batches; it writes
``corpus_warm_<tag>.json``/``.md``. A full run with ``--with-warm before,after`` adds those runs (read from
``--out``) to ``corpus.md`` as a before/after table, each with its own commit and machine load.

Children run as ``python -m benchmarks.corpus_bench --child ...`` so each RSS is its own process's; with
``--smoke`` they run in-process instead (seconds, not minutes; its RSS and timing figures mean nothing).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

GLOBAL_BATCH = 32  # the pipeline's default finetune/compress batch size
MAX_SEQ_LEN = 128
SEED = 0
TASK = "rte"  # a pair task in GLUE's train format: index, sentence1, sentence2, label


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks.corpus_bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--sizes", default=None, help="comma-separated corpus sizes (default 100000,1000000,5000000)")
    p.add_argument("--workdir", default=None, help="where the synthetic corpora and caches go (default: a temp dir)")
    p.add_argument("--reps", type=int, default=None, help="alternations of the throughput measurement")
    p.add_argument("--batches", type=int, default=2000, help="length-grouped batches iterated per size")
    p.add_argument("--warm-only", action="store_true", help="only the warm start (see the module docstring)")
    p.add_argument("--warm-reps", type=int, default=3, help="--warm-only: fresh processes opening each warm cache")
    p.add_argument("--tag", default="run", help="--warm-only: the result is corpus_warm_<tag>.json/.md")
    p.add_argument("--with-warm", default=None, metavar="TAG,TAG",
                   help="full run: summarise these corpus_warm_<tag>.json from --out in corpus.md")
    p.add_argument("--child", choices=("build", "iterate", "half"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--corpus", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    p.add_argument("--part", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--check-sampler", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _tokenizer():
    from dynabert.model.pretrained import default_model_dir, load_tokenizer

    return load_tokenizer(default_model_dir())


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def _log_line(line: str) -> None:
    print(line, flush=True)


# ------------------------------------------------------------------------------------------------
# children (each a fresh process)
# ------------------------------------------------------------------------------------------------


def child_build(args) -> None:
    from dynabert.data.cache import prepare

    tokenizer = _tokenizer()
    rss_before = common.peak_rss_bytes()
    start = time.perf_counter()
    cached = prepare(TASK, "train", args.corpus, tokenizer=tokenizer, max_seq_len=MAX_SEQ_LEN, cache_dir=args.cache,
                     log=_log_line)
    seconds = time.perf_counter() - start
    arrays = cached.manifest["arrays"]
    return {"seconds": seconds, "rows": len(cached), "tokens": cached.manifest["tokens"],
            "cache_bytes": sum(a["bytes"] for a in arrays.values()),
            "array_bytes": {name: a["bytes"] for name, a in arrays.items()},
            "routes": cached.manifest["build"]["routes"], "peak_rss_before": rss_before,
            "build_id": cached.manifest["build"]["id"],
            "peak_rss": common.peak_rss_bytes()}


def grouped_global_batches(split, global_batch: int, seed: int, epoch: int):
    """GlobalBatches(group_by_length=True).global_indices from the lengths array alone, in little memory:
    (int32 [steps, global_batch] example indices, order of the steps)."""
    import numpy as np

    from dynabert.data.batching import MEGABATCH

    lengths = split.lengths
    n = len(lengths)
    steps = n // global_batch
    rng = np.random.RandomState((seed, epoch))
    order = np.arange(n, dtype=np.int32)
    rng.shuffle(order)  # the same draws as rng.permutation(n), in half its memory
    order = order[: steps * global_batch]
    size = MEGABATCH * global_batch
    for k, start in enumerate(range(0, len(order), size)):
        chunk = order[start:start + size]
        chunk[:] = chunk[np.argsort(lengths[chunk], kind="stable")]
        if k % 64 == 63:
            split.drop_pages()
    split.drop_pages()
    return order.reshape(steps, global_batch), rng.permutation(steps)


def child_iterate(args) -> None:
    from dynabert.data.cache import prepare
    from dynabert.data.features import collate

    tokenizer = _tokenizer()
    pad = tokenizer.pad_token_id
    rss_before = common.rss_bytes()
    peak_before = common.peak_rss_bytes()
    start = time.perf_counter()
    split = prepare(TASK, "train", args.corpus, tokenizer=tokenizer, max_seq_len=MAX_SEQ_LEN, cache_dir=args.cache,
                    log=_log_line)
    opened = time.perf_counter()
    batches, step_order = grouped_global_batches(split, GLOBAL_BATCH, SEED, 0)
    ordered = time.perf_counter()
    first = None
    count = min(args.batches, len(step_order))
    for k in range(count):
        indices = batches[step_order[k]]
        batch = collate(split.rows(indices), pad)
        if first is None:
            first = time.perf_counter()
    done = time.perf_counter()
    result = {"rows": len(split), "build_id": split.manifest["build"]["id"], "prepare_seconds": opened - start,
              "order_seconds": ordered - opened,
              "open_to_first_batch_seconds": first - start, "batches": count,
              "batches_per_second": count / (done - ordered), "last_batch_shape": list(batch["input_ids"].shape),
              "rss_before_open": rss_before, "peak_rss_before_open": peak_before,
              "peak_rss": common.peak_rss_bytes(), "rss_anon_end": _status("RssAnon"),
              "rss_file_end": _status("RssFile")}
    if args.check_sampler:  # after the peak is read: GlobalBatches materializes every row's length
        from dynabert.data.batching import GlobalBatches

        reference = GlobalBatches(split, GLOBAL_BATCH, SEED, 0, 1, pad, group_by_length=True).global_indices(0)
        result["sampler_equals_global_batches"] = bool((reference == batches[step_order]).all())
    split.close()
    return result


def child_half(args) -> None:
    """Half of a two-process build: parse the whole file (a process cannot know where its half starts
    without parsing), tokenize rows [part*n/2, (part+1)*n/2), save the arrays."""
    import numpy as np

    from dynabert.data.readers import read_glue_tsv
    from dynabert.data.tokenizer import FastBertTokenizer

    start = time.perf_counter()
    fast = FastBertTokenizer(_tokenizer())
    examples = read_glue_tsv(args.corpus, TASK, "train")
    lo, hi = args.part * len(examples) // 2, (args.part + 1) * len(examples) // 2
    parts = {"ids": [], "segment_a": [], "lengths": [], "labels": []}
    for s in range(lo, hi, 16384):
        chunk = examples[s:min(s + 16384, hi)]
        encoded = fast.encode(chunk, MAX_SEQ_LEN)
        parts["ids"].append(encoded.ids.astype(np.uint16))
        parts["segment_a"].append(encoded.segment_a)
        parts["lengths"].append(encoded.lengths)
        parts["labels"].append(np.asarray([e.label for e in chunk], dtype=np.int64))
    for name, arrays in parts.items():
        np.save(os.path.join(args.cache, f"part{args.part}.{name}.npy"), np.concatenate(arrays))
    return {"seconds": time.perf_counter() - start}


# ------------------------------------------------------------------------------------------------
# parent
# ------------------------------------------------------------------------------------------------


CHILDREN = {"build": child_build, "iterate": child_iterate, "half": child_half}


def run_child(argv, in_process: bool = False, timeout=7200) -> dict:
    started = time.perf_counter()
    if in_process:  # --smoke: exercise the code without paying for a fresh Paddle import per child
        child_args = parse_args(argv)
        result = CHILDREN[child_args.child](child_args)
        result["wall_seconds"] = time.perf_counter() - started
        return result
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "benchmarks.corpus_bench", *argv], cwd=common.ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"child {argv} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["wall_seconds"] = wall
    return result


def sst2_sentences(smoke: bool):
    from dynabert.data.sources import load_split

    examples, source = load_split("sst-2", "train", limit=2000 if smoke else None, allow_download=False)
    return [e.text_a for e in examples], source


def write_pair_corpus(path: str, sentences, rows: int, seed: int = SEED) -> int:
    import numpy as np

    rng = np.random.RandomState(seed)
    labels = ("entailment", "not_entailment")
    with open(path, "w", encoding="utf-8") as f:
        f.write("index\tsentence1\tsentence2\tlabel\n")
        for start in range(0, rows, 100000):
            n = min(100000, rows - start)
            pick = rng.randint(0, len(sentences), size=(n, 2))
            label = rng.randint(0, 2, size=n)
            f.write("".join(f"{start + i}\t{sentences[a]}\t{sentences[b]}\t{labels[c]}\n"
                            for i, (a, b), c in zip(range(n), pick.tolist(), label.tolist())))
    return os.path.getsize(path)


def throughput(examples, reps: int, workdir: str, source_file) -> dict:
    """rows/s of PaddleNLP vs FastBertTokenizer (and the whole builder when ``source_file``), alternated."""
    import warnings

    from dynabert.data.cache import prepare
    from dynabert.data.features import encode
    from dynabert.data.tokenizer import FastBertTokenizer

    tokenizer = _tokenizer()
    times = {"paddle": [], "fast": [], "builder": []}
    for rep in range(reps):
        with common.Timer() as t, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encode(examples, tokenizer, MAX_SEQ_LEN)
        times["paddle"].append(t.seconds)
        with common.Timer() as t:
            FastBertTokenizer(tokenizer).encode(examples, MAX_SEQ_LEN)
        times["fast"].append(t.seconds)
        if source_file:
            cache = os.path.join(workdir, f"throughput_cache{rep}")
            with common.Timer() as t:
                prepare("sst-2", "train", source_file, tokenizer=tokenizer, max_seq_len=MAX_SEQ_LEN, cache_dir=cache,
                        limit=len(examples), log=lambda line: None)
            times["builder"].append(t.seconds)
            shutil.rmtree(cache)
    n = len(examples)
    result = {"rows": n, "reps": reps, "seconds": times,
              "paddle_rows_per_s": n / common.median(times["paddle"]),
              "fast_rows_per_s": n / common.median(times["fast"])}
    result["fast_speedup"] = result["fast_rows_per_s"] / result["paddle_rows_per_s"]
    if source_file:
        result["builder_rows_per_s"] = n / common.median(times["builder"])
        result["builder_speedup"] = result["builder_rows_per_s"] / result["paddle_rows_per_s"]
    return result


def split_build(corpus: str, workdir: str, one_process_seconds: float, in_process: bool) -> dict:
    """Two processes tokenizing half each (started together), then one merges: wall time to merged arrays."""
    import hashlib

    import numpy as np

    folder = os.path.join(workdir, "split_build")
    os.makedirs(folder, exist_ok=True)
    argv = ["--child", "half", "--corpus", corpus, "--cache", folder, "--part"]
    started = time.perf_counter()
    if in_process:
        halves = [run_child(argv + [str(k)], in_process=True)["seconds"] for k in (0, 1)]
    else:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        children = [subprocess.Popen([sys.executable, "-m", "benchmarks.corpus_bench", *argv, str(k)],
                                     cwd=common.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True) for k in (0, 1)]
        halves = []
        for child in children:
            out, err = child.communicate(timeout=7200)
            if child.returncode != 0:
                raise RuntimeError(f"half build failed:\n{err[-3000:]}")
            halves.append(json.loads([x for x in out.splitlines() if x.startswith("RESULT ")][-1][7:])["seconds"])
    tokenized = time.perf_counter()
    for name in ("ids", "segment_a", "lengths", "labels"):  # the merge: concatenate, hash, write
        merged = np.concatenate([np.load(os.path.join(folder, f"part{k}.{name}.npy")) for k in (0, 1)])
        if name == "lengths":
            offsets = np.zeros(len(merged) + 1, np.int64)
            np.cumsum(merged, out=offsets[1:])
            offsets.tofile(os.path.join(folder, "offsets.bin"))
            hashlib.sha256(offsets.tobytes()).hexdigest()
        merged.tofile(os.path.join(folder, f"{name}.bin"))
        hashlib.sha256(merged.tobytes()).hexdigest()
    done = time.perf_counter()
    shutil.rmtree(folder)
    return {"one_process_seconds": one_process_seconds, "two_processes_seconds": done - started,
            "two_processes_tokenize_seconds": tokenized - started, "merge_seconds": done - tokenized,
            "half_seconds": halves, "speedup": one_process_seconds / (done - started)}


def warm_only(args, sizes) -> dict:
    """Per size: a cold build, then ``args.warm_reps`` fresh processes opening the warm cache."""
    workdir = tempfile.mkdtemp(prefix="corpus_bench.", dir=args.workdir)
    try:
        sentences, data_source = sst2_sentences(args.smoke)
        print(f"data: {data_source}", flush=True)
        corpora = []
        for rows in sizes:
            corpus = os.path.join(workdir, f"pairs_{rows}.tsv")
            cache = os.path.join(workdir, f"cache_{rows}")
            tsv_bytes = write_pair_corpus(corpus, sentences, rows)
            print(f"{rows} rows: cold build", flush=True)
            build = run_child(["--child", "build", "--corpus", corpus, "--cache", cache], args.smoke)
            warm = []
            for rep in range(args.warm_reps):
                print(f"{rows} rows: warm open {rep + 1}/{args.warm_reps} + {args.batches} batches", flush=True)
                warm.append(run_child(["--child", "iterate", "--corpus", corpus, "--cache", cache, "--batches",
                                       str(args.batches)], args.smoke))
            corpora.append({
                "rows": rows, "tsv_bytes": tsv_bytes, "cache_bytes": build["cache_bytes"],
                "cold_prepare_seconds": build["seconds"], "warm": warm,
                "warm_reused_the_cold_build": all(w["build_id"] == build["build_id"] for w in warm),
                **{f"median_{key}": common.median([w[key] for w in warm]) for key in (
                    "prepare_seconds", "order_seconds", "open_to_first_batch_seconds", "peak_rss")}})
            shutil.rmtree(cache)
            os.unlink(corpus)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"machine": common.machine_info("cpu"), "smoke": args.smoke, "tag": args.tag, "data": data_source,
            "max_seq_len": MAX_SEQ_LEN, "global_batch": GLOBAL_BATCH, "warm_reps": args.warm_reps,
            "corpora": corpora}


def warm_runs(out: str, tags) -> list:
    """The --warm-only results ``tags`` (comma-separated) in ``out``, summarised: commit, load, medians."""
    runs = []
    for tag in (tags.split(",") if tags else []):
        with open(os.path.join(out, f"corpus_warm_{tag}.json")) as f:
            r = json.load(f)
        runs.append({"tag": tag, "file": f"corpus_warm_{tag}.json", "git_commit": r["machine"]["git_commit"],
                     "load_average_1_5_15_min": r["machine"]["load_average_1_5_15_min"], "warm_reps": r["warm_reps"],
                     "corpora": [{key: c[key] for key in ("rows", "warm_reused_the_cold_build",
                                                          "median_prepare_seconds", "median_order_seconds",
                                                          "median_open_to_first_batch_seconds")}
                                 for c in r["corpora"]]})
    return runs


def warm_markdown(r: dict) -> str:
    mb = 2 ** 20
    return "\n".join([
        f"# Corpus cache warm start ({r['tag']}; {'SMOKE' if r['smoke'] else 'full'}; {r['data']})", "",
        f"Synthetic pair corpora from SST-2 sentences. Per size one cold build, then {r['warm_reps']} fresh "
        f"processes each: prepare() on the warm cache, order one epoch of length-grouped global batches of "
        f"{r['global_batch']} from the lengths array, materialize + collate the first batch (medians; each "
        f"warm process reused the cold build: "
        f"{'yes' if all(c['warm_reused_the_cold_build'] for c in r['corpora']) else 'NO'}):", "",
        common.md_table(["rows", "TSV MiB", "cache MiB", "cold prepare s", "warm prepare() s",
                         "warm prepare() s, each process", "order one epoch s", "warm: prepare to first batch s",
                         "warm peak RSS MiB"],
                        [[c["rows"], c["tsv_bytes"] / mb, c["cache_bytes"] / mb, c["cold_prepare_seconds"],
                          c["median_prepare_seconds"], ", ".join(f"{w['prepare_seconds']:.3g}" for w in c["warm"]),
                          c["median_order_seconds"], c["median_open_to_first_batch_seconds"],
                          c["median_peak_rss"] / mb] for c in r["corpora"]])])


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        common.set_threads(1)
        _emit(CHILDREN[args.child](args))
        return 0
    if not args.out:
        raise SystemExit("--out is required")
    common.set_threads(1)
    import dynabert  # noqa: F401
    if args.warm_only:
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else \
            ([2000, 10000] if args.smoke else [1000000, 5000000])
        result = warm_only(args, sizes)
        common.write_result(args.out, f"corpus_warm_{args.tag}", result, warm_markdown(result))
        print(warm_markdown(result), flush=True)
        return 0
    from dynabert.data.readers import read_glue_tsv
    from dynabert.data.tasks import Example

    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else \
        ([2000, 10000] if args.smoke else [100000, 1000000, 5000000])
    reps = args.reps or (1 if args.smoke else 2)
    workdir = tempfile.mkdtemp(prefix="corpus_bench.", dir=args.workdir)
    try:
        sentences, data_source = sst2_sentences(args.smoke)
        print(f"data: {data_source}", flush=True)
        glue = os.environ.get("GLUE_DIR")
        sst2_file = os.path.join(glue, "SST-2", "train.tsv") if glue else None
        if sst2_file and os.path.isfile(sst2_file):
            single = read_glue_tsv(sst2_file, "sst-2", "train", limit=2000 if args.smoke else None)
        else:  # smoke without data: the built-in sentences, written out so the builder has a file
            sst2_file = os.path.join(workdir, "sst2_train.tsv")
            with open(sst2_file, "w", encoding="utf-8") as f:
                f.write("sentence\tlabel\n" + "".join(f"{s}\t1\n" for s in sentences))
            single = read_glue_tsv(sst2_file, "sst-2", "train")
        print(f"throughput: {len(single)} single sentences x {reps}", flush=True)
        single_result = throughput(single, reps, workdir, sst2_file)
        pair_file = os.path.join(workdir, "pairs_throughput.tsv")
        write_pair_corpus(pair_file, sentences, 2000 if args.smoke else 20000, seed=SEED + 1)
        pairs = read_glue_tsv(pair_file, TASK, "train")
        print(f"throughput: {len(pairs)} pairs x {reps}", flush=True)
        pair_result = throughput([Example(e.text_a, e.text_b, e.label) for e in pairs], reps, workdir, None)

        corpora = []
        for k, rows in enumerate(sizes):
            corpus = os.path.join(workdir, f"pairs_{rows}.tsv")
            cache = os.path.join(workdir, f"cache_{rows}")
            tsv_bytes = write_pair_corpus(corpus, sentences, rows)
            print(f"{rows} rows: cold build", flush=True)
            build = run_child(["--child", "build", "--corpus", corpus, "--cache", cache], args.smoke)
            print(f"{rows} rows: warm open + {args.batches} batches", flush=True)
            iterate = run_child(["--child", "iterate", "--corpus", corpus, "--cache", cache, "--batches",
                                 str(args.batches)] + (["--check-sampler"] if k == 0 else []), args.smoke)
            entry = {"rows": rows, "tsv_bytes": tsv_bytes, "cold_prepare_seconds": build["seconds"],
                     "cold_child_wall_seconds": build["wall_seconds"], "builder_peak_rss": build["peak_rss"],
                     "cache_bytes": build["cache_bytes"], "array_bytes": build["array_bytes"],
                     "tokens": build["tokens"], "routes": build["routes"],
                     "cache_bytes_per_million_rows": build["cache_bytes"] / rows * 1e6, **{
                         f"warm_{key}": value for key, value in iterate.items() if key != "rows"}}
            corpora.append(entry)
            if k == 1 or len(sizes) == 1:
                print(f"{rows} rows: two-process build", flush=True)
                split = split_build(corpus, workdir, build["wall_seconds"], args.smoke)
                split["rows"] = rows
            shutil.rmtree(cache)
            os.unlink(corpus)
        growth = corpora[-1]["warm_peak_rss"] - corpora[0]["warm_peak_rss"]
        result = {
            "machine": common.machine_info("cpu"),
            "smoke": args.smoke,
            "data": data_source,
            "max_seq_len": MAX_SEQ_LEN,
            "global_batch": GLOBAL_BATCH,
            "throughput_single": single_result,
            "throughput_pairs": pair_result,
            "corpora": corpora,
            "peak_rss_growth_bytes": growth,
            "split_build": split,
            "warm_start_runs": warm_runs(args.out, args.with_warm),
            "targets": {
                "builder_speedup_at_least_10x": single_result["builder_speedup"] >= 10,
                "fast_speedup_at_least_10x": single_result["fast_speedup"] >= 10,
                "rss_growth_at_most_50MB": growth <= 50 * 2 ** 20,
            },
        }
        common.write_result(args.out, "corpus", result, markdown(result))
        print(markdown(result), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def markdown(r: dict) -> str:
    mb = 2 ** 20
    s, p = r["throughput_single"], r["throughput_pairs"]
    lines = [f"# Corpus cache ({'SMOKE' if r['smoke'] else 'full'}; {r['data']})", "",
             f"Tokenizing throughput, same rows, same run, median of {s['reps']} alternations (max_seq_len "
             f"{r['max_seq_len']}):", "",
             common.md_table(["rows", "PaddleNLP rows/s", "FastBertTokenizer rows/s", "speedup",
                              "cache builder rows/s (read+hash+write)", "builder speedup"],
                             [[f"{s['rows']} SST-2 train sentences", s["paddle_rows_per_s"], s["fast_rows_per_s"],
                               f"{s['fast_speedup']:.1f}x", s["builder_rows_per_s"], f"{s['builder_speedup']:.1f}x"],
                              [f"{p['rows']} sentence pairs", p["paddle_rows_per_s"], p["fast_rows_per_s"],
                               f"{p['fast_speedup']:.1f}x", "", ""]]),
             "", f"Synthetic pair corpora from SST-2 sentences; warm: a fresh process runs prepare() (stats the "
             f"sources, checks the manifest's own SHA-256 and the arrays' sizes, maps the arrays), orders one epoch "
             f"of length-grouped global batches of {r['global_batch']} from the lengths array and materializes + "
             f"collates the first batches:", "",
             common.md_table(["rows", "TSV MiB", "cold prepare s", "builder peak RSS MiB", "cache MiB",
                              "cache MiB per 1M rows", "warm: prepare to first batch s", "batches iterated",
                              "peak RSS MiB", "RssAnon MiB", "RssFile MiB"],
                             [[c["rows"], c["tsv_bytes"] / mb, c["cold_prepare_seconds"], c["builder_peak_rss"] / mb,
                               c["cache_bytes"] / mb, c["cache_bytes_per_million_rows"] / mb,
                               c["warm_open_to_first_batch_seconds"], c["warm_batches"], c["warm_peak_rss"] / mb,
                               c["warm_rss_anon_end"] / mb, c["warm_rss_file_end"] / mb] for c in r["corpora"]]),
             "", f"Peak RSS growth from {r['corpora'][0]['rows']} to {r['corpora'][-1]['rows']} rows: "
             f"{r['peak_rss_growth_bytes'] / mb:.1f} MiB (target <= 50 MB).",
             ]
    check = r["corpora"][0].get("warm_sampler_equals_global_batches")
    if check is not None:
        lines.append(f"Lengths-only sampler equals GlobalBatches.global_indices at {r['corpora'][0]['rows']} "
                     f"rows: {check}.")
    b = r["split_build"]
    lines += ["", f"Build strategy, {b['rows']} rows: one process {b['one_process_seconds']:.1f} s (wall, incl. "
              f"start-up) vs two processes tokenizing half each {b['two_processes_tokenize_seconds']:.1f} s + merge "
              f"{b['merge_seconds']:.1f} s = {b['two_processes_seconds']:.1f} s (speedup {b['speedup']:.2f}x).",
              "", "Targets: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in r["targets"].items()) + "."]
    runs = r.get("warm_start_runs") or []
    if runs:
        lines += ["", "## Warm start: " + " vs ".join(run["tag"] for run in runs), "",
                  "`corpus_bench --warm-only`: per size one cold build, then fresh processes each running prepare() "
                  "on the warm cache, ordering one epoch of length-grouped batches and collating the first "
                  "(medians). Each run names the commit it measured and the machine's load then:", "",
                  common.md_table(["rows", "run", "commit", "load avg 1/5/15 min", "processes",
                                   "warm prepare() s", "order one epoch s", "warm: prepare to first batch s",
                                   "reused the cold build"],
                                  [[c["rows"], run["tag"], (run["git_commit"] or "?")[:7],
                                    " / ".join(str(x) for x in run["load_average_1_5_15_min"]), run["warm_reps"],
                                    c["median_prepare_seconds"], c["median_order_seconds"],
                                    c["median_open_to_first_batch_seconds"],
                                    "yes" if c["warm_reused_the_cold_build"] else "NO"]
                                   for _, _, run, c in sorted((c["rows"], k, run, c) for k, run in enumerate(runs)
                                                              for c in run["corpora"])]),
                  "", "Details: " + ", ".join(f"`{run['file']}`" for run in runs) + ". Reproduce (GLUE_DIR set): at "
                  "each commit `python -m benchmarks.corpus_bench --out DIR --warm-only --tag TAG --sizes "
                  "1000000,5000000 --warm-reps 3`, then `python -m benchmarks.corpus_bench --out DIR --with-warm "
                  "TAG,TAG`."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
