"""Reading `params.yaml` sections into typed dataclass configs.

Unknown keys are an error rather than silently ignored: a misspelt parameter in a sweep
would otherwise run the defaults and be recorded by DVC as if it had been applied.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        params = yaml.safe_load(handle) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return params


def load_section(section: str, path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    params = load_params(path)
    if section not in params:
        raise KeyError(f"{path}: no section {section!r} (have: {', '.join(sorted(params))})")
    return params[section] or {}


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from `data`, recursing into nested dataclass fields."""
    data = dict(data or {})
    where = where or cls.__name__
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        target = _dataclass_in(hints.get(name))
        if target is not None and isinstance(value, dict):
            value = from_dict(target, value, f"{where}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint  # type: ignore[return-value]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg  # type: ignore[return-value]
    return None
