"""The run folder: each stage's outputs in place under `<root>/<stage>/`, made complete by a marker.

Nothing here renames a folder: on S3 and GCS a rename copies every object. A stage writes its
outputs where they stay, and its marker, written last, is what says they are complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from pipeline.core.errors import UserError
from pipeline.core.fs import RunFS

log = logging.getLogger(__name__)
MARKER = "_COMPLETE"
# Working files of a stage in progress (a stage's scratch, not its output).
SCRATCH = "_scratch"
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


class RunFolder:
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

    def write_marker(self, stage: str, fingerprint: str) -> None:
        """The last write of a stage: from here on its outputs are complete."""
        self.fs.write_small_json(f"{self.stage_dir(stage)}/{MARKER}", {"stage": stage, "fingerprint": fingerprint, "at": now()})

    def remove_marker(self, stage: str) -> None:
        """The first step before a stage touches its own earlier outputs."""
        self.fs.delete(f"{self.stage_dir(stage)}/{MARKER}")

    def scratch_dir(self, stage: str) -> str:
        """Working files of one attempt of `stage` (removed after it, and by the next attempt)."""
        return f"{self.root}/{SCRATCH}/{stage}-{uuid.uuid4().hex[:12]}"

    def remove_scratch(self, stage: str) -> None:
        """Working files of earlier attempts of `stage` that died before cleaning up."""
        leftover = re.compile(rf"{re.escape(stage)}-[0-9a-f]{{12}}")
        for name in self.fs.list(f"{self.root}/{SCRATCH}"):
            if leftover.fullmatch(name):
                log.info("%s: removing %s/%s/%s left by an interrupted run", stage, self.root, SCRATCH, name)
                self.fs.delete(f"{self.root}/{SCRATCH}/{name}")

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
        history.append({"command": command, "at": now()})
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


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")




