"""Frozen config dataclasses to and from JSON.

Every run and checkpoint writes its resolved config next to it; these two
functions are the only (de)serialisation, so configs never go through pickle or eval.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass (nested dataclasses, tuples) as plain JSON types."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a config dataclass, got {type(config).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(config), default=_default))


def from_dict(cls: type[T], data: Mapping[str, Any], *, path: str = "") -> T:
    """Rebuild ``cls`` from :func:`to_dict` output. A value of the wrong JSON type or an unknown key is a
    ``ValueError`` naming its dotted path (``policy.horizon: expected an integer, got 'e'``)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{path or cls.__name__}: expected a JSON object, got {_shown(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field {unknown[0]!r} (fields: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, f"{path}.{name}" if path else name) for name, value in data.items()}
    return cls(**kwargs)


def save_json(config: Any, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(to_dict(config), indent=2) + "\n")


def load_json(cls: type[T], path: str | os.PathLike) -> T:
    return from_dict(cls, read_json_object(path))


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file that must hold an object (a config, a report): a ``ValueError`` naming the file otherwise."""
    try:
        value = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, expected an object")
    return value


_LEAF = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}
_LEAF_NAME = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        return None
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path=path)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if len(errors) == 1 else f"{path}: {_shown(value)} fits none of {hint}")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{path}: expected one of {', '.join(map(repr, args))}, got {_shown(value)}")
        return value
    if origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: expected a JSON array, got {_shown(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if args:
            if len(args) != len(value):
                raise ValueError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        return tuple(value)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ValueError(f"{path}: expected a JSON object, got {_shown(value)}")
        return dict(value)
    if hint in _LEAF:
        if not isinstance(value, _LEAF[hint]) or (hint is not bool and isinstance(value, bool)):
            raise ValueError(f"{path}: expected {_LEAF_NAME[hint]}, got {_shown(value)}")
        return float(value) if hint is float else value
    return value


def _shown(value: Any) -> str:
    """A JSON value for an error line: short, with its type when that is the point."""
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, list, dict)) or value is None else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
