"""The stage registry: the one list of stages, in pipeline order, and the configuration made from it.

Adding a stage is its module under `pipeline/stages/` (config, logic, `STAGE` entry) and one line
here. Pipeline order, `PipelineConfig`'s sections, `curate run`, the CLI's subcommands and the
report's stage order all come from `REGISTRY`; the Airflow DAG keeps a literal copy that a test
compares with it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.config import ConfigError, DemoConfig, SparkConfig, from_mapping, read_config
from pipeline.core.protocol import Stage
from pipeline.stages import (
    balance,
    cluster,
    count,
    download,
    embed,
    export,
    ingest,
    match,
    prune,
    report,
)
from pipeline.stages import filter as filter_stage

REGISTRY: tuple[Stage, ...] = (
    ingest.STAGE,
    match.STAGE,
    count.STAGE,
    balance.STAGE,
    download.STAGE,
    embed.STAGE,
    filter_stage.STAGE,
    cluster.STAGE,
    prune.STAGE,
    export.STAGE,
    report.STAGE,
)
STAGES: tuple[str, ...] = tuple(s.name for s in REGISTRY)
BY_NAME: dict[str, Stage] = {s.name: s for s in REGISTRY}
# What `curate run` runs when the config names no stages: the text path and the report.
TEXT_STAGES: tuple[str, ...] = ("ingest", "match", "count", "balance", "report")


def stage(name: str) -> Stage:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}") from None


@dataclass(frozen=True)
class RunConfig:
    """`curate run`: the pool, the run folder and the stages to run (in pipeline order)."""

    input: str | None = None
    output: str | None = None
    stages: tuple[str, ...] = TEXT_STAGES

    def validate(self, where: str) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"{where}.stages: unknown stage {unknown[0]!r}; stages are {', '.join(STAGES)}")
        if len(set(self.stages)) != len(self.stages):
            raise ConfigError(f"{where}.stages: a stage is listed twice: {', '.join(self.stages)}")
        if not self.stages:
            raise ConfigError(f"{where}.stages: empty; list at least one of {', '.join(STAGES)}")


def _validate(self, where: str = "config") -> None:
    for f in dataclasses.fields(self):
        value = getattr(self, f.name)
        if dataclasses.is_dataclass(value):
            value.validate(f"{where}.{f.name}")


def _to_dict(self) -> dict[str, Any]:
    data = dataclasses.asdict(self)
    del data["spark"]["explicit"]  # how the config was written, not a setting (see SparkConfig)
    return data


# One section per registered stage, between the session settings and the demo/run sections.
PipelineConfig = dataclasses.make_dataclass(
    "PipelineConfig",
    [
        ("seed", int, field(default=0)),
        ("spark", SparkConfig, field(default_factory=SparkConfig)),
        *[(s.name, s.config, field(default_factory=s.config)) for s in REGISTRY],
        ("demo", DemoConfig, field(default_factory=DemoConfig)),
        ("run", RunConfig, field(default_factory=RunConfig)),
    ],
    frozen=True,
    namespace={
        "validate": _validate,
        "to_dict": _to_dict,
        "stage_names": STAGES,
        "__doc__": "The whole configuration: seed, spark, one section per stage (REGISTRY), demo, run.",
    },
)
PipelineConfig.__module__ = __name__


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Any:
    """Read a YAML config (or the defaults), apply dotted overrides, validate: a PipelineConfig."""
    data = read_config(path, overrides)
    cfg = from_mapping(PipelineConfig, data, "config")
    cfg.validate()
    stated = data.get("spark") or {}
    return dataclasses.replace(cfg, spark=dataclasses.replace(cfg.spark, explicit=frozenset(stated)))
