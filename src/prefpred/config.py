"""Typed configuration: dataclasses, one per concern, loaded from YAML and overridden by CLI flags.

Each stage defines its own config dataclass next to its code (``DataConfig`` here, ``SplitConfig`` in
:mod:`prefpred.splits`, the CPU model's in :mod:`prefpred.models.cpu`, LLM training's in
:mod:`prefpred.training`, ...). A run config composes them. The field annotations are the one source of truth:
``Literal[...]`` for option choices, ``Annotated[int, Field(ge=1)]`` for bounds; pydantic 2 checks them. This
module gives the machinery every one of them uses:

* :func:`config_dataclass` makes a class a pydantic dataclass that rejects unknown keys; a bad value, in code or
  in a file, is one :class:`~prefpred.types.ConfigError` line naming the dotted key;
* :func:`from_dict` builds a (nested) config from a plain dict (YAML scalars are converted: ``"12"`` -> 12,
  ``"false"`` -> False);
* :func:`load_config` reads YAML and applies dotted overrides (``{"model.learning_rate": 0.1}``), errors name the
  file; :func:`parse_set` reads ``--set a.b=c`` options into such overrides;
* :func:`to_dict` / :func:`save_config` write the resolved config (``config.yaml`` in every run directory).

Limits: only the first validation problem is spelled out (the count of the others is appended); plain stdlib
dataclasses nested in a config (the inference config) are checked when loaded through :func:`from_dict`, but not
when built in code.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pydantic
import pydantic_core
import yaml
from pydantic import AfterValidator, ConfigDict, Field

from prefpred.types import ConfigError
from prefpred.types import check_run_name as check_plain_name
from prefpred.utils import atomic_write_text

T = TypeVar("T")

PYDANTIC_CONFIG = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
"""Unknown keys are errors; numbers given for text fields (``name: 2024``) become text."""


def _unwrap(tp: Any) -> Any:
    """The dataclass inside ``X | None`` / ``Annotated[X, ...]``, else ``tp``."""
    import typing

    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args and not dataclasses.is_dataclass(tp):
        return next((a for a in args if dataclasses.is_dataclass(a)), tp)
    return tp


def _field_names(cls: Any, loc: Sequence[Any]) -> list[str]:
    """Field names of the (nested) config class reached from ``cls`` along ``loc``; [] when unknown."""
    import typing

    for part in loc:
        if not dataclasses.is_dataclass(cls):
            return []
        try:
            cls = _unwrap(typing.get_type_hints(cls, include_extras=True).get(str(part)))
        except Exception:  # noqa: BLE001 - only used to list the known keys in a message
            return []
    return sorted(f.name for f in dataclasses.fields(cls) if f.init) if dataclasses.is_dataclass(cls) else []


def validation_message(err: pydantic.ValidationError, cls: Any, *, prefix: str = "") -> str:
    """One line for a pydantic error: the first problem with its dotted key (``model.lora.r``) and the value."""
    errors = err.errors(include_url=False)
    first = errors[0]
    loc = list(first["loc"])
    if loc and loc[0] == _WRAPPED:
        loc = loc[1:]
    where = ".".join(str(x) for x in ([prefix] if prefix else []) + loc)
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    kind = first["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        known = _field_names(cls, loc[:-1])
        return (f"unknown config key {where}" + (f" (known: {', '.join(known)})" if known else "") + more)
    msg = first["msg"]
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        return (f"{where}: {msg}" if where else msg) + more
    value = first.get("input")
    shown = "" if isinstance(value, (dict, pydantic_core.ArgsKwargs)) else f", got {value!r}"
    return f"{where}: {msg[:1].lower()}{msg[1:]}{shown}{more}"


def config_dataclass(cls: type[T]) -> type[T]:
    """Class decorator: a pydantic dataclass of :data:`PYDANTIC_CONFIG` whose bad values raise :class:`ConfigError`.

    Still a dataclass (``dataclasses.fields``/``replace``/``asdict`` work); ``__post_init__`` checks that span
    several fields run after the annotations are checked.
    """
    pcls = pydantic.dataclasses.dataclass(cls, config=PYDANTIC_CONFIG)
    init = pcls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except pydantic.ValidationError as e:
            raise ConfigError(validation_message(e, pcls, prefix=pcls.__name__)) from None

    pcls.__init__ = __init__  # type: ignore[method-assign]
    return pcls


def check_run_name(name: str | None) -> str | None:
    """A run name must be a plain folder name (no ``/``, not ``.``/``..``, not hidden, not blank)."""
    return name if name is None else check_plain_name(name)


RunName = Annotated[str | None, AfterValidator(check_run_name)]
"""A run's folder name (checked by :func:`check_run_name`)."""
_DEVICE = re.compile(r"auto|cpu|mps|meta|(cuda|xpu|npu|hpu)(:\d+)?")


def check_device(device: str) -> str:
    """``auto``, ``cpu``, ``mps``, ``cuda``, ``cuda:1`` (also ``xpu``/``npu``/``hpu`` with an index)."""
    if not _DEVICE.fullmatch(device):
        raise ValueError(f"not a device: {device!r} (use auto, cpu, cuda, cuda:N or mps)")
    return device


Device = Annotated[str, AfterValidator(check_device)]
"""A torch device string or ``auto`` (checked by :func:`check_device`)."""
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]


@config_dataclass
class DataConfig:
    """Where the pairs come from."""

    path: str | None = None
    """File (CSV, parquet, JSON, JSONL) or directory of a known format; ``None`` loads :attr:`hub_dataset`."""
    hub_dataset: str = "lmarena-ai/arena-human-preference-55k"
    """Hugging Face dataset id used when no path is given (needs network access)."""
    format: str = "auto"
    """Reader name (see ``prefpred.data.READERS``) or ``auto`` to detect from the file."""
    limit: PositiveInt | None = None
    """Keep only the first N rows (quick experiments; at least 1)."""
    skip_invalid: bool = False
    """Drop invalid rows (and report them) instead of failing on the first one."""
    extra_path: str | None = None
    """Optional extra (e.g. teacher-labelled) pairs mixed into training only."""
    extra_weight: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0
    """Sample weight of the extra pairs (finite, >= 0)."""


@config_dataclass
class RunBase:
    """Fields every run config shares (``prefpred run``, ``train``, ``experiment``): where the run directory goes,
    the one seed, and the data. Each command's config subclasses this and adds its own sections."""

    name: RunName = None
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


_WRAPPED = "config"


@functools.cache
def _adapter(cls: Any) -> pydantic.TypeAdapter:
    """A validator of ``cls``; plain stdlib dataclasses get :data:`PYDANTIC_CONFIG` through a wrapper model."""
    if pydantic.dataclasses.is_pydantic_dataclass(cls):
        return pydantic.TypeAdapter(cls)
    wrapper = pydantic.create_model(f"_{cls.__name__}", __config__=PYDANTIC_CONFIG, **{_WRAPPED: (cls, ...)})
    return pydantic.TypeAdapter(wrapper)


def from_dict(cls: type[T], data: dict[str, Any] | None, *, _where: str = "") -> T:
    """Build config ``cls`` from ``data``; unknown keys and bad values raise :class:`ConfigError` (one line)."""
    data = dict(data or {})
    adapter = _adapter(cls)
    try:
        if pydantic.dataclasses.is_pydantic_dataclass(cls):
            return adapter.validate_python(data)
        return getattr(adapter.validate_python({_WRAPPED: data}), _WRAPPED)
    except pydantic.ValidationError as e:
        raise ConfigError(validation_message(e, cls, prefix=_where)) from None


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


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``--set`` options (``["training.learning_rate=1e-4", "model.lora.r=8"]``) -> dotted overrides.

    Values are read as YAML (``8`` -> 8, ``[q_proj, v_proj]`` -> a list, ``false`` -> False); text that is not
    valid YAML stays text.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("--set expects KEY=VALUE with a dotted config key (e.g. seed=7, split.n_folds=10), "
                              f"got {item!r}")
        try:
            out[key] = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            out[key] = value
    return out


def option_overrides(keys: dict[str, str], values: dict[str, Any], force: bool) -> dict[str, Any]:
    """Dotted config overrides from a command's option values (``None`` = not given); ``--force`` -> overwrite."""
    return {**{key: values[option] for option, key in keys.items()}, "overwrite": True if force else None}


def save_config(obj: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    text = yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True)
    return atomic_write_text(path, text)
