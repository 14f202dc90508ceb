"""Check a task's files and show what the model will see: rows, labels, token lengths.

    python -m tools.inspect_data --task sst-2 [--glue_dir DIR] [--model minilm] [--max_seq_len 128]
    python -m tools.inspect_data --config my.yaml [--set data.custom.train_file=...]   # your own data too

Every row is parsed (a malformed one is reported as file:line), so this is also a quick validation of
a data directory before a long run. The token-length percentiles help choose data.max_seq_len.
"""
import argparse
import collections
import sys

import numpy as np

import dynabert  # noqa: F401  (zlib before paddle)
from dynabert.errors import UserError


def describe(task, glue_dir, model: str, max_seq_len: int) -> str:
    """``task``: a GLUE task's name or a TaskSpec (``task_spec(cfg)``: custom data)."""
    from dynabert.data.features import encode
    from dynabert.data.sources import load_split
    from dynabert.data.tasks import get_task
    from dynabert.model import pretrained

    spec = get_task(task)
    tokenizer = pretrained.load_tokenizer(pretrained.default_model_dir() if model == "minilm" else model)
    lines = []
    for split in ("train",) + spec.dev_splits:
        examples, source = load_split(spec, split, glue_dir, allow_download=False)
        lengths = np.asarray([len(f.input_ids) for f in encode(examples, tokenizer, 10**6)])
        lines.append(f"{split}: {source}")
        if spec.is_regression:
            labels = np.asarray([e.label for e in examples])
            lines.append(f"  labels: mean {labels.mean():.3f}, min {labels.min():g}, max {labels.max():g}")
        else:
            counts = collections.Counter(e.label for e in examples)
            lines.append("  labels: " + ", ".join(f"{spec.labels[k]} {counts[k]}" for k in sorted(counts)))
        p50, p95, p99 = np.percentile(lengths, [50, 95, 99])
        cut = float((lengths > max_seq_len).mean())
        lines.append(f"  tokens: mean {lengths.mean():.1f}, p50 {p50:.0f}, p95 {p95:.0f}, p99 {p99:.0f}, "
                     f"max {lengths.max()}; {cut:.1%} longer than max_seq_len {max_seq_len}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tools.inspect_data", description=__doc__.splitlines()[0])
    p.add_argument("--task", default="sst-2")
    p.add_argument("--glue_dir", default=None, help="default: $GLUE_DIR")
    p.add_argument("--model", default=None,
                   help="whose tokenizer to use (a model directory or 'minilm'; default: the config's, else minilm)")
    p.add_argument("--max_seq_len", type=int, default=128)
    p.add_argument("--config", default=None,
                   help="a run's YAML config: its data.task (custom data too), glue_dir and max_seq_len")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    args = p.parse_args(argv)
    try:
        if args.config or args.set:
            from dynabert.data.tasks import task_spec
            from launcher.config import load_config

            cfg = load_config(args.config, args.set)
            print(describe(task_spec(cfg), cfg.data.glue_dir, args.model or cfg.model.name_or_path,
                           cfg.data.max_seq_len))
        else:
            print(describe(args.task, args.glue_dir, args.model or "minilm", args.max_seq_len))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
