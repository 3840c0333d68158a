"""A run folder: stages commit atomically (temporary folder, rename, completion marker)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipeline.errors import UserError
from pipeline.fs import RunFS
from pipeline.ledger import DETAIL, REASON, split_decisions

log = logging.getLogger(__name__)
MARKER = "_COMPLETE"
# The folder Spark writes rows with a null partition value into.
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
PACKAGES = (
    "curate-pipeline", "pyspark", "pyarrow", "pandas", "numpy", "ahocorasick-rs", "pyahocorasick",
    "nltk", "matplotlib", "torch", "open_clip_torch", "faiss-cpu", "img2dataset",
)


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@dataclass
class StageResult:
    stage: str
    path: str
    stats: dict[str, Any]
    skipped: bool = False


class Run:
    """The run folder `root`: `<root>/<stage>/data`, `<root>/decisions/stage=<stage>`, `<root>/run.json`."""

    def __init__(self, spark, root: str) -> None:
        self.spark = spark
        self.fs = RunFS(spark)
        self.root = root.rstrip("/")

    def stage_dir(self, stage: str) -> str:
        return f"{self.root}/{stage}"

    def data_dir(self, stage: str) -> str:
        return f"{self.root}/{stage}/data"

    def ledger_dir(self, stage: str) -> str:
        return f"{self.root}/decisions/stage={stage}"

    def marker(self, stage: str) -> dict[str, Any] | None:
        path = f"{self.stage_dir(stage)}/{MARKER}"
        return self.fs.read_json(path) if self.fs.exists(path) else None

    def is_complete(self, stage: str, fingerprint: str | None = None) -> bool:
        m = self.marker(stage)
        return m is not None and (fingerprint is None or m.get("fingerprint") == fingerprint)

    def stats(self, stage: str) -> dict[str, Any]:
        return self.fs.read_json(f"{self.stage_dir(stage)}/stats.json")

    def write_run_json(self, config: dict[str, Any], seed: int, command: list[str]) -> None:
        """Record the resolved config, versions and seed; earlier stages' entries are kept."""
        path = f"{self.root}/run.json"
        previous = self.fs.read_json(path) if self.fs.exists(path) else {}
        history = previous.get("invocations", [])
        history.append({"command": command, "at": _now()})
        self.fs.mkdirs(self.root)
        self.fs.write_json(
            path,
            {
                "config": config,
                "config_hash": config_hash(config),
                "seed": seed,
                "versions": package_versions(),
                "python": platform.python_version(),
                "spark": self.spark.version,
                "spark_master": self.spark.sparkContext.master,
                # The session's settings (`SET`): what it started with plus what was set since,
                # such as the config's SQL settings applied under spark-submit.
                "spark_conf": {
                    row.key: row.value for row in self.spark.sql("SET").collect()
                    if row.key.startswith(("spark.master", "spark.sql.", "spark.executor", "spark.driver.memory"))
                },
                "invocations": history[-50:],
            },
        )

    def commit(
        self,
        stage: str,
        decided: DataFrame,
        fingerprint: str,
        shape: Callable[[DataFrame], DataFrame] = lambda kept: kept,
        extra_stats: dict[str, Any] | None = None,
        output_partitions: int = 0,
        started: float | None = None,
        files: dict[str, Any] | None = None,
        stats_from: Callable[[DataFrame], dict[str, Any]] | None = None,
        detail: Callable[[], Column] | None = None,
        tables: dict[str, DataFrame] | None = None,
    ) -> StageResult:
        """Commit a stage that decides rows: `decided` carries `_reason` (null = kept) and `_detail`.

        The decided frame is computed exactly once. Generic path: it is written whole to the
        temporary folder, and the kept rows (through `shape`) and the ledger are split from
        that file. Fast path, for stages whose detail is a function of the output columns
        (`detail` given, `shape` applied to every row): it is written partitioned by
        `_reason`, the kept partition becomes the output as it is, and the ledger is a
        narrow projection of the whole. Either way, stats come from the written ledger.
        """
        t0 = time.time()

        def generic(tmp: str) -> dict[str, Any]:
            decided.write.option("compression", "zstd").parquet(f"{tmp}/all")
            log.debug("%s: computed and wrote the decided frame in %.1fs", stage, time.time() - t0)
            written_all = self.spark.read.parquet(f"{tmp}/all")
            kept, ledger = split_decisions(written_all)
            out = shape(kept)
            out = out.repartition(output_partitions) if output_partitions else out
            out.write.option("compression", "zstd").parquet(f"{tmp}/data")
            ledger.write.option("compression", "zstd").parquet(f"{tmp}/ledger")
            return stats_from(written_all) if stats_from else {}

        def fast(tmp: str) -> dict[str, Any]:
            frame = shape(decided.drop(DETAIL))  # shape keeps every column here, _reason included
            schema = frame.drop(REASON).schema
            # A handful of reasons: write them side by side instead of sorting every row by reason.
            with sql_conf(self.spark, {"spark.sql.optimizer.plannedWrite.enabled": "false", "spark.sql.maxConcurrentOutputFileWriters": "16"}):
                frame.write.option("compression", "zstd").partitionBy(REASON).parquet(f"{tmp}/all")
            log.debug("%s: computed and wrote the decided frame in %.1fs", stage, time.time() - t0)
            written_all = self.spark.read.parquet(f"{tmp}/all").withColumn(REASON, F.col(REASON).cast("string"))
            ledger = written_all.select("uid", REASON, detail().alias(DETAIL))
            split_decisions(ledger)[1].write.option("compression", "zstd").parquet(f"{tmp}/ledger")
            extra = stats_from(written_all) if stats_from else {}  # before the kept rows move out
            kept_dir = f"{tmp}/all/{REASON}={HIVE_NULL}"
            if self.fs.exists(kept_dir):
                self.fs.rename(kept_dir, f"{tmp}/data")
            else:
                self.spark.createDataFrame([], schema).write.parquet(f"{tmp}/data")
            return extra

        def write(tmp: str) -> dict[str, Any]:
            extra = (fast if detail is not None else generic)(tmp)
            log.debug("%s: split kept rows and ledger in %.1fs", stage, time.time() - t0)
            self.fs.delete(f"{tmp}/all")
            written = self.spark.read.parquet(f"{tmp}/ledger")
            by = written.groupBy("decision", "reason").count().collect()
            kept_n = sum(r["count"] for r in by if r["decision"] == "kept")
            dropped = {r["reason"]: r["count"] for r in by if r["decision"] == "dropped"}
            data_n = self.spark.read.parquet(f"{tmp}/data").count()
            if data_n != kept_n:
                raise RuntimeError(f"{stage}: wrote {data_n} rows but the ledger keeps {kept_n}; not committing")
            log.debug("%s: stats in %.1fs", stage, time.time() - t0)
            return {
                "rows_in": kept_n + sum(dropped.values()),
                "kept": kept_n,
                "dropped": dict(sorted(dropped.items())),
                "dropped_total": sum(dropped.values()),
                **extra,
            }

        return self._commit(stage, write, fingerprint, extra_stats, started, tables, files, with_ledger=True)

    def commit_tables(
        self,
        stage: str,
        tables: dict[str, DataFrame],
        fingerprint: str,
        extra_stats: dict[str, Any] | None = None,
        started: float | None = None,
        files: dict[str, Any] | None = None,
    ) -> StageResult:
        """Commit a stage that decides no rows (e.g. counting): named tables, stats, marker."""
        return self._commit(stage, lambda tmp: {}, fingerprint, extra_stats, started, tables, files, with_ledger=False)

    def _commit(self, stage, write, fingerprint, extra_stats, started, tables, files, with_ledger) -> StageResult:
        """Write into a temporary folder; remove the old output, rename the new one in, marker last.

        A crash at any point leaves the stage either complete or visibly incomplete (no marker),
        and an incomplete stage is redone on the next run.
        """
        started = started or time.time()
        # Leftovers of this stage from a run that died mid-write: never complete, now removed.
        leftover = re.compile(rf"{re.escape(stage)}-[0-9a-f]{{12}}")
        for name in self.fs.list(f"{self.root}/_tmp"):
            if leftover.fullmatch(name):
                log.info("%s: removing %s/_tmp/%s left by an interrupted run", stage, self.root, name)
                self.fs.delete(f"{self.root}/_tmp/{name}")
        tmp = f"{self.root}/_tmp/{stage}-{uuid.uuid4().hex[:12]}"
        stats: dict[str, Any] = {"stage": stage, **write(tmp)}
        for name, df in (tables or {}).items():
            df.write.option("compression", "zstd").parquet(f"{tmp}/{name}")
        for name, obj in (files or {}).items():
            # bytes as they are (e.g. a .npy or a small .parquet file), anything else as JSON
            if isinstance(obj, bytes):
                self.fs.write_bytes(f"{tmp}/{name}", obj)
            else:
                self.fs.write_json(f"{tmp}/{name}", obj)
        log.debug("%s: tables and files written at %.1fs", stage, time.time() - started)
        stats.update({"seconds": round(time.time() - started, 3), "finished": _now(), **(extra_stats or {})})
        self.fs.write_json(f"{tmp}/stats.json", stats)

        self.fs.delete(self.stage_dir(stage))
        self.fs.delete(self.ledger_dir(stage))
        if with_ledger:
            self.fs.rename(f"{tmp}/ledger", self.ledger_dir(stage))
        self.fs.rename(tmp, self.stage_dir(stage))
        self.fs.write_json(
            f"{self.stage_dir(stage)}/{MARKER}", {"stage": stage, "fingerprint": fingerprint, "at": _now()}
        )
        if with_ledger:
            log.info(
                "%s: %d in, %d kept, %d dropped %s in %.1fs",
                stage, stats["rows_in"], stats["kept"], stats["dropped_total"], stats["dropped"], stats["seconds"],
            )
        else:
            log.info("%s: done in %.1fs", stage, stats["seconds"])
        return StageResult(stage, self.stage_dir(stage), stats)

    def resolve_input(self, path: str, upstream: str) -> str:
        """`path` as a stage input: a run folder means its `upstream` stage's data, a stage folder its data."""
        path = path.rstrip("/")
        if self.fs.exists(f"{path}/{upstream}/{MARKER}"):
            return f"{path}/{upstream}/data"
        if self.fs.exists(f"{path}/{MARKER}") and self.fs.exists(f"{path}/data"):
            return f"{path}/data"
        if self.fs.exists(f"{path}/{upstream}"):
            raise FileNotFoundError(f"{path}/{upstream} is incomplete (no {MARKER}); rerun the {upstream} stage")
        if not self.fs.exists(path):
            raise FileNotFoundError(f"input not found: {path}")
        return path


def check_outside(
    run_root: str, source: str, pool: bool = False, output_name: str = "--output", input_name: str = "the input"
) -> None:
    """Refuse a run folder inside the folder a stage reads (`pool`: the pool ingest reads, or that folder itself).

    A run folder in the pool makes ingest read the run's own files (run.json first) as pool rows
    and fail deep in Spark; one inside a later stage's input is read with it, or deleted when the
    stage it sits in recommits. A later stage's input may be the run folder itself (its upstream
    stage's output), so only `pool` refuses the same folder.
    """
    out, src = _comparable(run_root), _comparable(source)
    if out == src and pool:
        raise UserError(f"{output_name} {run_root} is the input {source}: choose a run folder outside the pool")
    if out != src and out.startswith(src):
        where = "the pool" if pool else "it"
        raise UserError(f"{output_name} {run_root} is inside {input_name} {source}: choose a run folder outside {where}")


_URI = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")


def _comparable(path: str) -> str:
    """`path` with a trailing slash, so a prefix test is a folder test (/a/bc is not inside /a/b):
    local paths absolute with symlinks resolved, other URIs (s3a://, hdfs://) as written."""
    scheme = _URI.match(path)
    if scheme and scheme.group(1).lower() != "file":
        return path.rstrip("/") + "/"
    if scheme:  # file:/x, file:///x
        path = "/" + path[len(scheme.group(0)):].lstrip("/")
    return os.path.join(os.path.realpath(path), "")


@contextmanager
def sql_conf(spark, settings: dict[str, str]):
    """Set session SQL settings for one block, then put back what was there."""
    before = {k: spark.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")




