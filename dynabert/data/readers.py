"""Readers: a task's file in, ``Example``s out, every problem reported as ``file:line: ...``.

``read_examples`` reads any task's file with the reader its ``TaskSpec.format`` names: GLUE's TSV
(``read_glue_tsv``), or the user's own CSV / TSV (``read_delimited``) and JSON lines (``read_jsonl``).
"""
import csv
import json
import os

import numpy as np

from dynabert.data.tasks import Example, TaskSpec, check_split, get_task
from dynabert.errors import UserError


def read_examples(path, task, split, limit=None) -> list:
    """One split's file (``path``: the task's own, or an extra training file in its format) as Examples."""
    spec = get_task(task)
    if spec.format == "glue":
        return read_glue_tsv(path, spec, split, limit)
    if spec.format == "jsonl":
        return read_jsonl(path, spec, split, limit)
    return read_delimited(path, spec, split, limit)


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
    path, spec, raw = _open_own(path, task, split, limit)
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
        where = " (data.custom.labels)" if spec.is_custom else ""
        raise UserError(
            f"{path}:{line}: {spec.label} {value!r} is not one of {', '.join(spec.labels)}{where}"
        ) from None


# ----------------------------------------------------------------------------------------------
# the user's own files (data.task: custom)
# ----------------------------------------------------------------------------------------------

_ROLES = (("text_a", "data.custom.text_column"), ("text_b", "data.custom.pair_column"),
          ("label", "data.custom.label_column"))


def _open_own(path, spec: TaskSpec, split: str, limit):
    """The file, opened in binary (``_decoded_lines`` names the line of a decoding error)."""
    spec = get_task(spec)
    check_split(spec, split)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of rows, got {limit}")
    path = os.fspath(path)
    try:
        return path, spec, open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (needed for {spec.name} {split})") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a data file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot open: {e.strerror or e}") from None


def _no_rows(path: str, last_line: int):
    if last_line == 0:
        return UserError(f"{path}:1: file is empty")
    return UserError(f"{path}:{last_line + 1}: no data rows after line {last_line}")


def read_delimited(path, task, split, limit=None) -> list:
    """A CSV or TSV file (``TaskSpec.format``) with a header line naming the columns, read with Python's csv
    module (fields may be quoted, ``""`` for a quote inside, as pandas and spreadsheets write them).

    Columns the task does not use are ignored; every row must have as many fields as the header.
    ``limit`` keeps the first N rows. Every problem raises UserError naming ``path:line``."""
    path, spec, raw = _open_own(path, task, split, limit)
    delimiter, kind = ("\t", "tab") if spec.format == "tsv" else (",", "comma")
    examples, header, start = [], None, 0
    with raw:
        # Line ends kept: a quoted field may span lines. ``start`` is the first line of the current row.
        reader = csv.reader((text + "\n" for _, text in _decoded_lines(path, raw)), delimiter=delimiter,
                            strict=True)
        try:
            while True:
                start = reader.line_num + 1
                fields = next(reader, None)
                if fields is None:
                    break
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue  # a blank line carries no row
                if header is None:
                    header = fields
                    index = _header_index(path, start, spec, header)
                    continue
                if len(fields) != len(header):
                    raise UserError(f"{path}:{start}: expected {len(header)} {kind}-separated fields (as in the "
                                    f"header), found {len(fields)}")
                label = _parse_label(spec, fields[index["label"]], path, start)
                text_b = fields[index["text_b"]] if spec.text_b else None
                examples.append(Example(fields[index["text_a"]], text_b, label))
                if limit is not None and len(examples) >= limit:
                    break
        except csv.Error as e:
            raise UserError(f"{path}:{start}: malformed {spec.format.upper()} row: {e}") from None
    if not examples:
        raise _no_rows(path, 0 if header is None else reader.line_num)
    return examples


def _header_index(path: str, line: int, spec: TaskSpec, header: list) -> dict:
    """role -> column index for each column the task reads (text_a, text_b, label)."""
    index = {}
    for role, key in _ROLES:
        column = getattr(spec, role)
        if column is None:
            continue
        if column not in header:
            raise UserError(f"{path}:{line}: header has no column {column!r} ({key}); found: {', '.join(header)}")
        if header.count(column) > 1:
            raise UserError(f"{path}:{line}: header names column {column!r} ({key}) {header.count(column)} times")
        index[role] = header.index(column)
    return index


def read_jsonl(path, task, split, limit=None) -> list:
    """A JSON-lines file: one object per line, with the task's text (and pair) key holding a string and its
    label key a label of the set (text, or an integer: 1 is "1") or, for regression, a number. Other keys are
    ignored; blank lines are skipped. Every problem raises UserError naming ``path:line``."""
    path, spec, raw = _open_own(path, task, split, limit)
    examples, last = [], 0
    with raw:
        for number, text in _decoded_lines(path, raw):
            if not text.strip():
                continue
            last = number
            try:
                row = json.loads(text)
            except ValueError as e:
                problem = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
                raise UserError(f"{path}:{number}: not valid JSON ({problem})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{number}: expected a JSON object, found {_json_kind(row)}")
            values = {}
            for role, key in _ROLES:
                column = getattr(spec, role)
                if column is None:
                    continue
                if column not in row:
                    raise UserError(f"{path}:{number}: missing key {column!r} ({key}); found: "
                                    f"{', '.join(map(repr, row)) or 'no keys'}")
                values[role] = row[column]
            for role in ("text_a", "text_b"):
                if role in values and not isinstance(values[role], str):
                    raise UserError(f"{path}:{number}: {getattr(spec, role)!r} must be a string, found "
                                    f"{_json_kind(values[role])}")
            label = _parse_label(spec, _json_label(spec, values["label"], path, number), path, number)
            examples.append(Example(values["text_a"], values.get("text_b"), label))
            if limit is not None and len(examples) >= limit:
                break
    if not examples:
        raise _no_rows(path, last)
    return examples


def _json_label(spec: TaskSpec, value, path: str, line: int) -> str:
    """A JSON label as the text ``_parse_label`` reads: a string as it is, a number (regression, or an integer
    class such as 1) as written."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None or not isinstance(value, (int, float)):
        raise UserError(f"{path}:{line}: {spec.label} must be a "
                        f"{'number' if spec.is_regression else 'string or an integer'}, found {_json_kind(value)}")
    return repr(value)


def _json_kind(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), f"the number {value!r}" if isinstance(value, (int, float)) else type(value).__name__)
