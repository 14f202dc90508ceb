"""``dynabert-predict MODEL_DIR``: classify sentences with a chosen model (the ``model/`` directory that
``dynabert-select`` writes, in whichever runtime and precision its card.json names) or a plain export directory
(``<run>/export/width_W``, Paddle Inference fp32).

Input (``--input FILE``, default standard input, ``-`` too):
  * a TSV file with a header line naming a ``sentence`` column (GLUE files: ``sentence``, ``sentence1`` +
    ``sentence2``, ``question`` + ``sentence``, ...; or the text columns the model's task was trained on, as its
    card says, e.g. a custom task's ``data.custom.text_column``; other columns such as ``label`` are ignored), or
  * one sentence per line, or a sentence pair as two tab-separated columns.
Output (``--output FILE``, default standard output): a TSV header ``label`` and ``p_<class>`` per class, then
per input line the predicted label and the softmax probabilities, in input order (a regression model: a
``score`` header and one number per line).
A malformed line stops the run with ``error: FILE:LINE: ...`` (exit 2) before anything is written.
"""
import argparse
import io
import os
import sys
from typing import List, Optional, Sequence, TextIO, Tuple

import dynabert  # noqa: F401  (zlib before paddle)
from dynabert.errors import UserError, run_reporting_errors
from dynabert.train.preflight import check_max_seq_len

TEXT_COLUMNS = (("sentence1", "sentence2"), ("question1", "question2"), ("#1 String", "#2 String"),
                ("question", "sentence"), ("sentence", None), ("text_a", "text_b"), ("text", None))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dynabert-predict", description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--input", default="-", help="TSV file or '-' for standard input (default)")
    p.add_argument("--output", default=None, help="output TSV (default standard output)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-seq-len", type=int, default=None, help="default: the model card's (the run's)")
    return p


def _columns(header: List[str], known=TEXT_COLUMNS) -> Optional[Tuple[int, Optional[int]]]:
    """(text_a index, text_b index or None) when ``header`` names known text columns, else None."""
    for a, b in known:
        if a in header and (b is None or b in header):
            return header.index(a), (header.index(b) if b else None)
    return None


def read_sentences(stream: TextIO, name: str, text_columns=None) -> List[Tuple[str, Optional[str]]]:
    """(text_a, text_b) per input line; UserError ``name:line: ...`` for a malformed one. ``text_columns``: the
    model's own (text, pair or None) column names, recognised in a header line before the GLUE ones."""
    lines = []
    for number, raw in enumerate(stream, start=1):
        lines.append((number, raw.rstrip("\r\n")))
    rows = [(n, t) for n, t in lines if t.strip()]
    if not rows:
        raise UserError(f"{name}:1: no sentences")
    own = tuple(text_columns) if text_columns and text_columns[0] else None
    known = ((own[0], own[1]),) + TEXT_COLUMNS if own else TEXT_COLUMNS
    columns = _columns(rows[0][1].split("\t"), known)
    width = len(rows[0][1].split("\t")) if columns else None
    out = []
    for number, text in rows[1:] if columns else rows:
        fields = text.split("\t")
        if columns:
            if len(fields) != width:
                raise UserError(f"{name}:{number}: expected {width} tab-separated fields as in the header, "
                                f"found {len(fields)}")
            a, b = fields[columns[0]], (fields[columns[1]] if columns[1] is not None else None)
        elif len(fields) in (1, 2):
            a, b = fields[0], (fields[1] if len(fields) == 2 else None)
        else:
            raise UserError(f"{name}:{number}: expected one sentence or two tab-separated sentences, found "
                            f"{len(fields)} fields (a TSV file needs a header line naming a sentence column)")
        if not a.strip() or (b is not None and not b.strip()):
            raise UserError(f"{name}:{number}: empty sentence")
        out.append((a, b))
    if not out:
        raise UserError(f"{name}:{rows[0][0]}: a header line and no sentences")
    return out


def predict(served, sentences, *, batch_size: int, max_seq_len: int):
    """(label names, [(label, scores)]) for each sentence, in order."""
    import numpy as np

    from dynabert.data.features import encode
    from dynabert.data.tasks import Example
    from dynabert.deploy.measure import predict_logits

    features = encode([Example(a, b, 0) for a, b in sentences], served.tokenizer, max_seq_len)
    logits = predict_logits(served.runner, features, batch_size=batch_size,
                            pad_token_id=served.tokenizer.pad_token_id)
    if logits.shape[-1] == 1:  # regression: the score is the prediction
        return ["score"], [(f"{v:.6g}", [float(v)]) for v in logits[:, 0]]
    names = served.labels or [str(i) for i in range(logits.shape[-1])]
    z = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    return names, [(names[int(p.argmax())], [float(x) for x in p]) for p in probs]


def run(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    from dynabert.deploy.serve_dir import load_served
    from dynabert.io_utils import atomic_write_text

    if args.batch_size < 1 or args.threads < 1:
        raise UserError("--batch-size and --threads must be >= 1")
    served = load_served(args.model_dir, threads=args.threads)
    text_columns = served.card.get("text_columns")
    if args.input == "-":
        try:
            sentences = read_sentences(stdin, "<stdin>", text_columns)
        except UnicodeDecodeError as e:
            raise UserError(f"<stdin>: not UTF-8 text ({e.reason})") from None
    else:
        try:
            with open(args.input, encoding="utf-8") as f:
                sentences = read_sentences(f, args.input, text_columns)
        except FileNotFoundError:
            raise UserError(f"{args.input}: no such file") from None
        except UnicodeDecodeError as e:
            raise UserError(f"{args.input}: not UTF-8 text ({e.reason})") from None
    max_seq_len = args.max_seq_len or int(served.card.get("max_seq_len") or 128)
    if max_seq_len < 3:
        raise UserError(f"--max-seq-len: must be >= 3, got {max_seq_len}")
    check_max_seq_len(max_seq_len, args.model_dir, key="--max-seq-len",
                      limit=served.card.get("max_position_embeddings"))
    names, results = predict(served, sentences, batch_size=args.batch_size, max_seq_len=max_seq_len)
    text = io.StringIO()
    if names == ["score"]:  # regression: one number per line
        text.write("score\n" + "".join(f"{label}\n" for label, _ in results))
    else:
        text.write("\t".join(["label"] + [f"p_{n}" for n in names]) + "\n")
        for label, scores in results:
            text.write("\t".join([label] + [f"{s:.6f}" for s in scores]) + "\n")
    if args.output:
        atomic_write_text(os.path.abspath(args.output), text.getvalue())
    else:
        stdout.write(text.getvalue())
        stdout.flush()


def main(argv: Optional[Sequence[str]] = None, stdin: Optional[TextIO] = None,
         stdout: Optional[TextIO] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return run_reporting_errors(lambda: run(args, stdin or sys.stdin, stdout or sys.stdout))


if __name__ == "__main__":
    sys.exit(main())
