"""Small typed records and the plain data they are saved as (JSON files, YAML configs).

`from_plain` builds a dataclass from a mapping, checking its keys and the type of every value;
`read_json` and `read_json_lines` read JSON files. Bad data raises a one-line error that names
its source (the file, or the config) and what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class RecordError(ValueError):
    """Plain data of the wrong shape, or a file that is not JSON; the message names the source."""


def from_plain(cls: type[T], values: object, source: str, error: type[ValueError] = RecordError) -> T:
    """An instance of the dataclass `cls` from `values`, a mapping of its field names (fields
    with defaults may be left out); fields that are records, or lists of records, are built
    from their plain data in turn. Unknown or missing keys and values of another type than a
    field's hint raise `error` naming `source`."""
    if not isinstance(values, dict):
        raise error(f"{source}: expected a mapping of key: value, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise error(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(fields)}")
    missing = [name for name, f in fields.items() if name not in values and _required(f)]
    if missing:
        raise error(f"{source}: missing key(s) {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    checked = {}
    for key, value in values.items():
        value = _nested(hints[key], value, f"{source}, {key}", error)
        allowed = allowed_types(hints[key])
        if not _admits(allowed, value):
            names = " or ".join("null" if t is type(None) else getattr(t, "__name__", str(t)) for t in allowed)
            raise error(f"{source}: {key} must be {names}, got {value!r} ({type(value).__name__})")
        checked[key] = value
    return cls(**checked)


def allowed_types(hint: object) -> tuple:
    """The types a field's hint admits: (int,) for `int`, (str, NoneType) for `str | None`."""
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def read_json(path: str | Path, what: str) -> object:
    """The JSON value in the file `path` (a `what`, e.g. "results file")."""
    return _parse(_read_text(Path(path), what), Path(path), what)


def read_json_lines(path: str | Path, what: str) -> list:
    """The JSON value of every non-empty line of `path` (a `what`, e.g. "metrics file")."""
    path = Path(path)
    lines = _read_text(path, what).splitlines()
    return [_parse(line, path, what, f"line {number}") for number, line in enumerate(lines, 1) if line.strip()]


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _nested(hint: object, value: object, source: str, error: type[ValueError]) -> object:
    """`value` built as the record `hint` names (or a list of them) from plain data, else as is."""
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_plain(hint, value, source, error)
    item = typing.get_args(hint)[0] if typing.get_origin(hint) is list else None
    if dataclasses.is_dataclass(item) and isinstance(value, list):
        return [from_plain(item, v, f"{source}[{i}]", error) for i, v in enumerate(value)]
    return value


def _admits(allowed: tuple, value: object) -> bool:
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int) and float in allowed:
        return True
    return isinstance(value, tuple(typing.get_origin(t) or t for t in allowed))


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise RecordError(f"{what} {path} not found; check the path") from None
    except UnicodeDecodeError:
        raise RecordError(f"{what} {path} is not a text (JSON) file") from None
    except OSError as error:
        raise RecordError(f"cannot read {what} {path}: {error.strerror or error}") from None


def _parse(text: str, path: Path, what: str, where: str = "") -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        line = where or f"line {error.lineno}"
        raise RecordError(f"{what} {path} is not valid JSON ({error.msg} at {line}, column {error.colno})") from None
