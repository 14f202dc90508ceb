"""Readers: a task's file in, ``Example``s out, every problem reported as ``file:line: ...``."""
import csv
import os

import numpy as np

from dynabert.data.tasks import Example, TaskSpec, check_split, get_task
from dynabert.errors import UserError


def _decoded_lines(path: str, raw):
    """Yield (line_number, text) so that a decoding error can name its line (text mode cannot)."""
    for number, data in enumerate(raw, start=1):
        try:
            # utf-8-sig on line 1: GLUE's MRPC files inherit a byte-order mark from the MSR release.
            text = data.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{path}:{number}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column "
                            f"{e.start + 1})") from None
        yield number, text.rstrip("\r\n")


def read_glue_tsv(path, task, split, limit=None) -> list:
    """Parse one split of a GLUE task from its original TSV file into Examples.

    Every row must have as many fields as the header (QUOTE_NONE: GLUE text contains stray quotes).
    ``limit`` keeps the first N rows. All problems raise UserError naming ``path:line``.
    """
    spec = get_task(task)
    check_split(spec, split)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of rows, got {limit}")
    path = os.fspath(path)
    try:
        raw = open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (needed for {spec.name} {split})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot open: {e.strerror or e}") from None
    examples = []
    current = [0]  # number of the last line handed to csv: GLUE rows never span lines under QUOTE_NONE

    def texts():
        for number, text in _decoded_lines(path, raw):
            if text.strip():  # a blank line carries no row (trailing blank lines are common)
                current[0] = number
                yield text

    with raw:
        reader = csv.reader(texts(), delimiter="\t", quoting=csv.QUOTE_NONE)
        header = spec.columns
        try:
            if header is None:
                header = next(reader, None)
                if header is None:
                    raise UserError(f"{path}:1: file is empty; expected a header line naming the columns")
            index = {}
            for column in (spec.text_a, spec.text_b, spec.label):
                if column is not None and column not in header:
                    hint = " (is the header line missing?)" if spec.columns is None else ""
                    raise UserError(f"{path}:{current[0]}: header has no column {column!r}{hint}; "
                                    f"found: {', '.join(header)}")
                if column is not None:
                    index[column] = header.index(column)
            for fields in reader:
                line = current[0]
                if len(fields) != len(header):
                    raise UserError(f"{path}:{line}: expected {len(header)} tab-separated fields, found {len(fields)}")
                label = _parse_label(spec, fields[index[spec.label]], path, line)
                text_b = fields[index[spec.text_b]] if spec.text_b else None
                examples.append(Example(fields[index[spec.text_a]], text_b, label))
                if limit is not None and len(examples) >= limit:
                    break
        except csv.Error as e:
            raise UserError(f"{path}:{current[0]}: {e}") from None
    if not examples:
        if current[0] == 0:
            raise UserError(f"{path}:1: file is empty")
        raise UserError(f"{path}:{current[0] + 1}: no data rows after line {current[0]}")
    return examples


def _parse_label(spec: TaskSpec, value: str, path: str, line: int):
    value = value.strip()
    if spec.labels is None:
        try:
            score = float(value)
        except ValueError:
            score = float("nan")
        if not np.isfinite(score):
            raise UserError(f"{path}:{line}: {spec.label} {value!r} is not a number")
        return score
    try:
        return spec.labels.index(value)
    except ValueError:
        raise UserError(
            f"{path}:{line}: {spec.label} {value!r} is not one of {', '.join(spec.labels)}"
        ) from None
