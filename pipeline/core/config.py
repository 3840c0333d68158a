"""Configuration machinery: typed, frozen dataclasses built from YAML mappings, with errors that name the key.

Each stage keeps its own config dataclass beside its logic; `pipeline.registry` assembles them
into `PipelineConfig`, one section per registered stage."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.errors import UserError


class ConfigError(UserError):
    """A configuration value or key is wrong; the message names the key."""


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[*]"
    driver_memory: str = "4g"
    shuffle_partitions: int = 8
    ui: bool = False
    # Extra `spark.*` settings, passed through as given.
    conf: dict[str, str] = field(default_factory=dict)
    # The keys of `spark:` that the config file or an override stated (load_config records them):
    # under spark-submit only stated settings are applied, and one stated equal to its default
    # still counts, since spark-submit's own default may differ (200 shuffle partitions, not 8).
    # How the config was written, not a setting: no YAML key, no part of equality or to_dict.
    explicit: frozenset[str] = field(default=frozenset(), compare=False, repr=False, metadata={"internal": True})

    def validate(self, where: str) -> None:
        if self.shuffle_partitions < 1:
            raise ConfigError(f"{where}.shuffle_partitions: must be >= 1, got {self.shuffle_partitions}")
        for key in self.conf:
            if not key.startswith("spark."):
                raise ConfigError(f"{where}.conf.{key}: Spark settings start with 'spark.'")


@dataclass(frozen=True)
class DemoConfig:
    rows: int = 5000
    concepts: int = 300
    zipf_exponent: float = 1.1
    image_size: int = 64
    near_duplicate_fraction: float = 0.05
    malformed_fraction: float = 0.02

    def validate(self, where: str) -> None:
        if self.rows < 10:
            raise ConfigError(f"{where}.rows: must be >= 10, got {self.rows}")
        if not 2 <= self.concepts:
            raise ConfigError(f"{where}.concepts: must be >= 2, got {self.concepts}")
        if self.zipf_exponent <= 0:
            raise ConfigError(f"{where}.zipf_exponent: must be > 0, got {self.zipf_exponent}")
        for name in ("near_duplicate_fraction", "malformed_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 0.5:
                raise ConfigError(f"{where}.{name}: must be in [0, 0.5), got {value}")
        if self.image_size < 8:
            raise ConfigError(f"{where}.image_size: must be >= 8, got {self.image_size}")


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a type hint, allowing int where float is asked; return it."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {hint}, got {type(value).__name__} {value!r}")
    if origin is tuple:
        item_t = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_check_type(v, item_t, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        key_t, val_t = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {
            _check_type(k, key_t, f"{where}.{k}"): _check_type(v, val_t, f"{where}.{k}")
            for k, v in value.items()
        }
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got bool {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_mapping(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types by name."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}: unknown key; known keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        key = f"{where}.{name}"
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_mapping(hint, value, key)
        else:
            kwargs[name] = _check_type(value, hint, key)
    return cls(**kwargs)


def read_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A YAML config's mapping (or an empty one) with dotted overrides applied (None = not given)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}".splitlines()[0]) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config.{dotted}: {part} is not a section")
        node[leaf] = value
    return data
