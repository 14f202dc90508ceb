"""``dynabert-prepare``: tokenize a run's corpus into its cache before the job starts.

    dynabert-prepare --config my.yaml [--set data.cache_dir=/shared/cache ...] [--verify]

Takes the same ``--config``/``--set`` as ``dynabert-launch``. The job's own prepare stage then finds the
cache warm (a fraction of a second to open, whatever the corpus size). Worth it for large corpora: a cold
build holds the corpus file in memory once (about 2 GB for 5M sentence pairs), better done before the ranks
start.

A warm open checks sizes, modification times and the manifest's own SHA-256, never file contents.
``--verify`` also hashes every source file and cache array against the SHA-256 in the manifest, rebuilds a
split that differs and says what differed: it finds what the cheap check cannot (a source file replaced by
one of the same size and modification time, an array corrupted in place without changing size).
"""
import argparse
import sys
import time


def main(argv=None) -> int:
    from dynabert.errors import run_reporting_errors

    p = argparse.ArgumentParser(prog="dynabert-prepare", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML config (the job's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--verify", action="store_true",
                   help="hash every source file and cache array against the manifest; rebuild what differs")
    args = p.parse_args(argv)
    return run_reporting_errors(lambda: _prepare(args))


def _prepare(args) -> None:
    from dynabert.data.task_data import cache_dir
    from dynabert.model.pretrained import tokenizer_of
    from dynabert.stages.prepare import prepare_data
    from dynabert.train.run_log import RunLog
    from launcher.config import load_config

    cfg = load_config(args.config, args.set)
    start = time.perf_counter()
    data = prepare_data(cfg, tokenizer_of(cfg), RunLog(cfg.run.out_dir, enabled=False), verify=args.verify)
    print(f"prepared{' and verified' if args.verify else ''} in {time.perf_counter() - start:.1f}s: "
          f"train {len(data.train)} rows, "
          f"{data.selection_name} {len(data.selection)}, dev {len(data.dev)} (cache {cache_dir(cfg)})")

if __name__ == "__main__":
    sys.exit(main())
