"""Load a ``Config``: defaults < YAML file < ``--set section.key=value`` overrides.

Unknown keys, wrong types and impossible values are rejected with the dotted key (and the file) named.
YAML is parsed with ``yaml.safe_load``: a config can never construct objects or run code. An override of a
string key is not YAML at all: its text is the value (``parse_override``).
"""
import dataclasses
import os
import typing
from typing import Any, Dict, Iterable, Mapping, Optional

import yaml

from dynabert.config import Config
from dynabert.errors import UserError


def _read_yaml(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(e, "problem", None) or str(e)
        raise UserError(f"{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple:
    """``a.b=value`` -> (["a", "b"], value). The field's type decides how the text is read: a string key
    (paths, names) takes it verbatim; a list of strings is one verbatim entry or a YAML list whose entries
    stay text; anything else (numbers, booleans, lists of numbers, null) is YAML: 0.5, true, null, [1.0, 0.5]."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {text}: expected section.key=value")
    keys = key.strip().split(".")
    return keys, _parse_value(raw, field_type(keys), ".".join(keys))


def field_type(keys: list):
    """The annotation of the config field at ``keys``; None for a section or a key the config does not have
    (those are read as YAML and reported by ``_build`` with the dotted key)."""
    tp = Config
    for part in keys:
        hints = typing.get_type_hints(tp) if dataclasses.is_dataclass(tp) else {}
        if part not in hints:
            return None
        tp = hints[part]
    return None if dataclasses.is_dataclass(tp) else tp


def _parse_value(raw: str, tp, dotted: str) -> Any:
    optional = _is_optional(tp)
    if optional:
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
    if tp is str:
        # YAML would cut "runs/exp #2" at the comment, read "a: b" as a mapping, "&x dir" as an anchor, "2024" as
        # a number: a path given on the command line must arrive as typed. Only an optional key's exact "null"
        # means unset (the documented way to drop, e.g., a config file's model.teacher).
        return None if optional and raw == "null" else raw
    if typing.get_origin(tp) in (tuple, typing.Tuple) and typing.get_args(tp)[0] is str:
        if not raw.strip():
            return []
        if not raw.lstrip().startswith("["):
            return [raw]  # one entry, verbatim
        try:
            # BaseLoader resolves no types: every entry stays the text written (1e-3, null, true alike).
            return yaml.load(raw, Loader=yaml.BaseLoader)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e)
            raise UserError(f"--set: {dotted}: not a YAML list ({problem}); quote entries that hold ',' '#' ']' or"
                            " ': ', e.g. [\"runs/a #1.tsv\", b.tsv], or give one path without brackets") from None
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw  # not YAML: keep the text (the field's type check then names the key)


def _merge(base: Dict[str, Any], path: list, value: Any, dotted: str) -> None:
    node = base
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"{dotted}: {part} is a value, not a section")
        node = child
    node[path[-1]] = value


def _is_optional(tp) -> bool:
    return typing.get_origin(tp) is typing.Union and type(None) in typing.get_args(tp)


def _coerce(value: Any, tp, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; the only conversions are int->float and list->tuple."""
    if _is_optional(tp):
        if value is None:
            return None
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        raise UserError(f"{key}: expected a section (mapping), got {value!r}")
    if origin in (tuple, typing.Tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key}: expected a list, got {value!r}")
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float:
        if isinstance(value, str):
            # PyYAML reads 3e-3 (no dot) as a string; every user writes learning rates that way.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp} at {key}")  # a bug in dynabert/config.py


def _build(base, data: Mapping[str, Any], prefix: str = ""):
    """``base`` with the keys of ``data`` replaced. Nested sections start from ``base``'s own value, so
    a section's defaults (e.g. compress.optim's learning rate) survive a partial override."""
    cls = type(base)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            kwargs[name] = _build(getattr(base, name), value, prefix + name + ".")
        else:
            kwargs[name] = _coerce(value, hints[name], prefix + name)
    # Config.__post_init__ re-validates the whole tree on replace.
    return dataclasses.replace(base, **kwargs)


def load_config(path: Optional[str] = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, then the YAML file, then each ``--set`` in order. Raises UserError naming the key."""
    data: Dict[str, Any] = _read_yaml(path) if path else {}
    try:
        cfg = _build(Config(), data)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    overrides = list(overrides)
    if not overrides:
        return cfg
    for text in overrides:
        keys, value = parse_override(text)
        _merge(data, keys, value, ".".join(keys))
    try:
        return _build(Config(), data)
    except UserError as e:
        raise UserError(f"--set: {e}") from None


def config_to_dict(cfg: Config) -> Dict[str, Any]:
    """Plain data (lists, not tuples) for writing the resolved config next to the results."""
    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x
    return plain(dataclasses.asdict(cfg))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def shipped_configs(root: str) -> list:
    """Every YAML under configs/: each one is loaded by a test."""
    folder = os.path.join(root, "configs")
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith((".yaml", ".yml")))
