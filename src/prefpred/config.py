"""Typed configuration: dataclasses, one per concern, loaded from YAML and overridden by CLI flags.

Each stage defines its own config dataclass next to its code (``DataConfig`` here, ``SplitConfig`` in
:mod:`prefpred.splits`, the CPU model's in :mod:`prefpred.models.cpu`, LLM training's in
:mod:`prefpred.training`, ...). A run config composes them. This module gives the machinery every one of them
uses:

* :func:`from_dict` builds a (nested) dataclass from a plain dict, checking keys and basic types, so a typo in
  a YAML file is one clear error instead of a silently ignored key;
* :func:`load_config` reads YAML and applies dotted overrides (``{"model.learning_rate": 0.1}``);
* :func:`to_dict` / :func:`save_config` write the resolved config (``config.yaml`` in every run directory).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from prefpred.types import ConfigError
from prefpred.utils import atomic_write_text

T = TypeVar("T")


@dataclasses.dataclass
class DataConfig:
    """Where the pairs come from."""

    path: str | None = None
    """File (CSV, parquet, JSON, JSONL) or directory of a known format; ``None`` loads :attr:`hub_dataset`."""
    hub_dataset: str = "lmarena-ai/arena-human-preference-55k"
    """Hugging Face dataset id used when no path is given (needs network access)."""
    format: str = "auto"
    """Reader name (see ``prefpred.data.READERS``) or ``auto`` to detect from the file."""
    limit: int | None = None
    """Keep only the first N rows (quick experiments)."""
    skip_invalid: bool = False
    """Drop invalid rows (and report them) instead of failing on the first one."""
    extra_path: str | None = None
    """Optional extra (e.g. teacher-labelled) pairs mixed into training only."""
    extra_weight: float = 1.0
    """Sample weight of the extra pairs."""


@dataclasses.dataclass
class RunBase:
    """Fields every run config shares (``prefpred run``, ``train``, ``experiment``): where the run directory goes,
    the one seed, and the data. Each command's config subclasses this and adds its own sections."""

    name: str | None = None
    """Run name: the run directory is ``<out_dir>/<name>``. Default: ``<command>-<UTC timestamp>``."""
    out_dir: str = "runs"
    """Folder holding run directories."""
    seed: int = 42
    """One seed for everything: splits, model initialisation and training, Python/NumPy/torch RNGs."""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    """The labelled pairs (and optional extra training-only pairs)."""

    def run_name(self, prefix: str) -> str:
        """:attr:`name`, or ``<prefix>-<UTC timestamp>`` when none is set."""
        from datetime import datetime, timezone

        return self.name or f"{prefix}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, _where=where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            if isinstance(value, str) and origin is list:
                value = [v.strip() for v in value.split(",") if v.strip()]
            else:
                raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_convert(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
            return value.lower() in {"true", "yes", "1"}
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, *, _where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise :class:`ConfigError`."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{_where}." if _where else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)} (known: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in data.items():
        where = f"{_where}.{name}" if _where else name
        kwargs[name] = _convert(value, hints[name], where)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{_where or cls.__name__}: {e}") from e


def to_dict(obj: Any) -> Any:
    """Plain (YAML-safe) dict of a dataclass, recursively."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``"model.num_leaves"``) in a nested dict; ``None`` values are skipped."""
    out = _deepcopy_dict(data)
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return out


def _deepcopy_dict(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy_dict(v) if isinstance(v, dict) else v for k, v in d.items()}


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e.__class__.__name__}: {str(e).splitlines()[0]})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Read ``path`` (YAML, optional), apply dotted ``overrides`` and build ``cls``."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides or {})
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        if path:
            raise ConfigError(f"{path}: {e}") from e
        raise


def save_config(obj: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    text = yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True)
    return atomic_write_text(path, text)
