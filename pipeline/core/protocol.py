"""The stage protocol: what a stage declares, what it is given, what it returns, and `execute()`.

A stage is its config dataclass, one function `run(ctx) -> Output` and one `Stage` entry. Everything
else happens here, once, for every stage: resolve its inputs, fingerprint them with its config,
skip it when complete, run it, check its output against its contract, write the output in its
final place, then `stats.json`, then the marker. Before a stage touches an earlier output of its
own, its marker goes first, so nothing half-written is ever marked complete; no folder is renamed.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.errors import UserError
from pipeline.core.folder import MARKER, RunFolder, check_outside, config_hash, now

log = logging.getLogger("pipeline.stage")


class InputError(UserError):
    """An input path that is not what the stage reads (an incomplete or different stage's output)."""


@dataclass(frozen=True)
class Input:
    """One input slot of a stage: its flag (`--<flag>`) and the upstream stages that can fill it.

    `sources` lists upstream stages, nearest first: a run folder fills the slot with the first of
    them that is complete there, a stage folder with itself. Any other path is passed as it is
    (a Parquet folder, an img2dataset output, ...). No sources: the slot is a pool or a file.
    """

    flag: str
    sources: tuple[str, ...]
    help: str
    # Extra spellings of the flag on the command line (e.g. embed's --npz).
    aliases: tuple[str, ...] = ()
    # `curate run` may leave it unfilled (no stage of `sources` enabled or complete): the stage
    # then gets the run folder itself and decides (export without images writes no shards).
    optional: bool = False


@dataclass(frozen=True)
class Upstream:
    """A resolved input: what was given, which stage's output it is, and the path to read."""

    given: str
    path: str  # the stage's data folder, or the given path when it is not a stage output
    stage: str | None = None
    dir: str | None = None  # the stage's folder (its marker, stats.json, side files)
    marker: dict[str, Any] | None = None


@dataclass
class Plan:
    """What a stage's `plan` hook adds before the skip decision.

    `fingerprint`: what else decides the output besides the config and the inputs (a metadata
    list's contents, per-shard identities). `redo`: run even when complete (e.g. a retry).
    `keep`: names under the stage folder that survive a rerun (embed's finished shards).
    `keep_ledger`: the stage rewrites its own ledger from the earlier one (download's retry).
    """

    fingerprint: dict[str, Any] = field(default_factory=dict)
    redo: bool = False
    keep: tuple[str, ...] = ()
    keep_ledger: bool = False


@dataclass
class Output:
    """What a stage's function returns; `execute` writes it.

    A stage that decides rows returns `decided` (its rows with `_reason`, null = kept, and
    `_detail`); the kept rows go through `shape` into `data/`, every row into the ledger. A stage
    that decides none returns `tables` (its `data/` among them, if any). `files` are small side
    files (bytes as they are, anything else as JSON); `stats` are added to stats.json.
    """

    decided: Any = None
    shape: Callable[[Any], Any] | None = None
    partitions: int = 0
    # download --retry-failed: the earlier ledger rows that stand, and data/ appended to.
    carried_ledger: Any = None
    append: bool = False
    tables: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    # More stats from the decided rows (computed once: they are cached for the two writes).
    stats_from: Callable[[Any], dict[str, Any]] | None = None
    # Cache the decided rows for the two writes (data, ledger). False when computing them again
    # costs less than caching them: a stage whose decided rows are a read of its own scratch
    # table with cheap columns added (prune). They must then be the same on every computation.
    cache: bool = True


@dataclass(frozen=True)
class Stage:
    """One registry entry."""

    name: str
    config: type  # the stage's frozen config dataclass; its fields are the stage's flags
    run: Callable[[Context], Output]
    help: str
    inputs: tuple[Input, ...] = ()
    # Contracts (schemas/<name>.json) of the written tables: {"data": "match", ...}.
    schemas: Mapping[str, str] = field(default_factory=dict)
    decides_rows: bool = True
    # The folder under the run (default: the stage's name).
    folder: str | None = None
    # Whether `seed` decides the output (it is then part of the fingerprint).
    seeded: bool = False
    # Config keys that change how, not what (parallelism): left out of the fingerprint.
    volatile: tuple[str, ...] = ()
    plan: Callable[[Context], Plan] | None = None
    # A line per result for `curate run`'s summary (default: rows in/kept/dropped).
    describe: Callable[[Any, str], str] | None = None

    @property
    def dir_name(self) -> str:
        return self.folder or self.name


@dataclass
class Context:
    """What a stage's function is given: the session, the run folder, its config and inputs."""

    spark: Any
    run: RunFolder
    stage: Stage
    pipeline: Any  # the whole PipelineConfig (seed, other sections a stage may consult)
    inputs: dict[str, Upstream]
    force: bool
    started: float
    # Whatever `plan` worked out that `run` needs too (loaded metadata, shard fingerprints).
    state: dict[str, Any] = field(default_factory=dict)
    _scratch: str | None = None

    @property
    def cfg(self) -> Any:
        """The stage's own config section."""
        return getattr(self.pipeline, self.stage.name)

    @property
    def seed(self) -> int:
        return self.pipeline.seed

    @property
    def dir(self) -> str:
        """The stage's folder, where its outputs are written in place."""
        return self.run.stage_dir(self.stage.dir_name)

    @property
    def data_dir(self) -> str:
        return f"{self.dir}/data"

    def input(self, flag: str = "input") -> Upstream:
        return self.inputs[flag]

    def scratch(self, name: str) -> str:
        """A path for working files of this attempt; removed when the stage ends, however it ends."""
        if self._scratch is None:
            self._scratch = self.run.scratch_dir(self.stage.name)
        return f"{self._scratch}/{name}"


@dataclass
class StageResult:
    stage: str
    path: str
    stats: dict[str, Any]
    skipped: bool = False


# --------------------------------------------------------------------------- inputs


def resolve(run: RunFolder, slot: Input, given: str) -> Upstream:
    """`given` as the input of `slot`: a run folder, a stage folder, or a path read as it is."""
    path = given.rstrip("/") or given
    fs = run.fs
    for source in slot.sources:
        marker = f"{path}/{source}/{MARKER}"
        if fs.exists(marker):
            return Upstream(given, f"{path}/{source}/data", source, f"{path}/{source}", fs.read_json(marker))
    if slot.sources and fs.exists(f"{path}/{MARKER}"):
        marker = fs.read_json(f"{path}/{MARKER}")
        if marker.get("stage") not in slot.sources:
            raise InputError(
                f"--{slot.flag} {given}: the output of the {marker.get('stage')} stage, not of {' or '.join(slot.sources)}"
            )
        return Upstream(given, f"{path}/data", marker["stage"], path, marker)
    started = [s for s in slot.sources if fs.exists(f"{path}/{s}")]
    if started:
        raise FileNotFoundError(
            f"{path}/{started[0]} is incomplete (no {MARKER}); rerun the {started[0]} stage"
            if len(started) == 1 else f"{path}: no complete stage among {', '.join(started)} (no {MARKER}); rerun one"
        )
    if not fs.exists(path):
        raise FileNotFoundError(f"input not found: {given}")
    return Upstream(given, path)


def _input_identity(run: RunFolder, up: Upstream) -> dict[str, Any]:
    """An input in a fingerprint: its qualified path and, for a stage output, when it was made."""
    made = {k: up.marker.get(k) for k in ("fingerprint", "at")} if up.marker else None
    return {"path": run.fs.qualify(up.path), "stage": up.stage, "made": made}


def fingerprint(ctx: Context, plan: Plan) -> str:
    section = {k: v for k, v in dataclasses.asdict(ctx.cfg).items() if k not in ctx.stage.volatile}
    return config_hash(
        {
            "stage": ctx.stage.name,
            "config": section,
            "seed": ctx.seed if ctx.stage.seeded else None,
            "inputs": {flag: _input_identity(ctx.run, up) for flag, up in sorted(ctx.inputs.items())},
            **plan.fingerprint,
        }
    )


# --------------------------------------------------------------------------- execute


def execute(
    stage: Stage,
    run: RunFolder,
    config: Any,
    inputs: Mapping[str, str | None] | None = None,
    force: bool = False,
    command: list[str] | None = None,
    record: bool = True,
) -> StageResult:
    """Run `stage` into `run` with `config`; inputs by flag (default: the run folder itself).

    `record`: append this invocation to run.json (`curate run` records once for all stages).
    """
    started = time.time()
    given = dict(inputs or {})
    ups: dict[str, Upstream] = {}
    for slot in stage.inputs:
        path = given.get(slot.flag) or (run.root if slot.sources else None)
        if path is None:
            raise InputError(f"{stage.name}: no --{slot.flag} given")
        check_outside(run.root, path, pool=not slot.sources)
        ups[slot.flag] = resolve(run, slot, path)
    ctx = Context(run.spark, run, stage, config, ups, force, started)
    plan = stage.plan(ctx) if stage.plan else Plan()
    fp = fingerprint(ctx, plan)
    if record:
        run.write_run_json(config.to_dict(), config.seed, command or [stage.name, *sys.argv[1:]])
    name, folder = stage.name, stage.dir_name
    if not force and not plan.redo and run.is_complete(folder, fp):
        log.info("%s: complete in %s with the same inputs and config; skipping", name, ctx.dir)
        return StageResult(name, ctx.dir, run.stats(folder), skipped=True)

    # From here on the stage's earlier outputs are touched: the marker goes first.
    run.remove_marker(folder)
    for entry in run.fs.list(ctx.dir):
        if entry not in plan.keep:
            run.fs.delete(f"{ctx.dir}/{entry}")
    if not plan.keep_ledger:
        run.fs.delete(run.ledger_dir(name))
    run.remove_scratch(name)
    try:
        out = stage.run(ctx)
        stats = _write(ctx, out)
    finally:
        if ctx._scratch is not None:
            run.fs.delete(ctx._scratch)
    stats = {"stage": name, **stats, **out.stats}
    stats.update(seconds=round(time.time() - started, 3), finished=now())
    run.fs.write_small_json(f"{ctx.dir}/stats.json", stats)
    run.write_marker(folder, fp)
    if "rows_in" in stats:
        log.info(
            "%s: %d in, %d kept, %d dropped %s in %.1fs",
            name, stats["rows_in"], stats["kept"], stats["dropped_total"], stats["dropped"], stats["seconds"],
        )
    else:
        log.info("%s: done in %.1fs", name, stats["seconds"])
    return StageResult(name, ctx.dir, stats)


def _write(ctx: Context, out: Output) -> dict[str, Any]:
    """Write a stage's output where it stays: data and ledger, tables, files. Returns stats."""
    stats: dict[str, Any] = {}
    if ctx.stage.decides_rows:
        if out.decided is None:
            raise RuntimeError(f"{ctx.stage.name}: decides rows but returned no decided frame")
        stats.update(_write_rows(ctx, out))
    for name, df in out.tables.items():
        _check_schema(ctx.stage, name, df)
        df.write.option("compression", "zstd").parquet(f"{ctx.dir}/{name}")
    for name, obj in out.files.items():
        if isinstance(obj, bytes):
            ctx.run.fs.write_bytes(f"{ctx.dir}/{name}", obj)
        else:
            ctx.run.fs.write_json(f"{ctx.dir}/{name}", obj)
    return stats


def _write_rows(ctx: Context, out: Output) -> dict[str, Any]:
    """Kept rows to `data/`, every row to the ledger, from one computation of the decided rows.

    The decided rows are cached (memory, spilling to the executors' local disks) for the two
    writes, instead of being written whole to the run folder first; with `out.cache` off each
    write computes them.
    """
    from pyspark import StorageLevel

    from pipeline.core.ledger import split_decisions

    spark, run, name = ctx.spark, ctx.run, ctx.stage.name
    decided = out.decided.persist(StorageLevel.MEMORY_AND_DISK) if out.cache else out.decided
    try:
        kept, ledger = split_decisions(decided)
        data = out.shape(kept) if out.shape else kept
        _check_schema(ctx.stage, "data", data)
        if out.partitions:
            data = data.repartition(out.partitions)
        data.write.mode("append" if out.append else "errorifexists").option("compression", "zstd").parquet(ctx.data_dir)
        if out.carried_ledger is not None:
            ledger = out.carried_ledger.unionByName(ledger)
        ledger.write.option("compression", "zstd").parquet(run.ledger_dir(name))
        extra = out.stats_from(decided) if out.stats_from else {}
    finally:
        if out.cache:
            decided.unpersist()
    written = spark.read.parquet(run.ledger_dir(name))
    by = written.groupBy("decision", "reason").count().collect()
    kept_n = sum(r["count"] for r in by if r["decision"] == "kept")
    dropped = {r["reason"]: r["count"] for r in by if r["decision"] == "dropped"}
    data_n = spark.read.parquet(ctx.data_dir).count()
    if data_n != kept_n:
        raise RuntimeError(f"{name}: wrote {data_n} rows but the ledger keeps {kept_n}; not marking it complete")
    return {
        "rows_in": kept_n + sum(dropped.values()),
        "kept": kept_n,
        "dropped": dict(sorted(dropped.items())),
        "dropped_total": sum(dropped.values()),
        **extra,
    }


def _check_schema(stage: Stage, table: str, df: Any) -> None:
    """A written table matches its contract: every contract column present with its type."""
    contract = stage.schemas.get(table)
    if contract is None:
        return
    from pipeline.core.contracts import contract_columns, spark_type

    have = {f.name: f.dataType for f in df.schema.fields}
    for col in contract_columns(contract):
        want = spark_type(col["type"])
        got = have.get(col["name"])
        if got is None:
            raise RuntimeError(f"{stage.name}: {table} has no column {col['name']} (schemas/{contract}.json)")
        if type(got) is not type(want) or getattr(got, "elementType", None).__class__ is not getattr(want, "elementType", None).__class__:
            raise RuntimeError(
                f"{stage.name}: {table}.{col['name']} is {got.simpleString()}, schemas/{contract}.json says {want.simpleString()}"
            )
