"""Stage runners shared by the CLI, spark-submit jobs and Airflow: read, call the stage, commit."""

from __future__ import annotations

import logging
import time

from pyspark import StorageLevel

from pipeline.config import PipelineConfig
from pipeline.ingest import with_ingest_decisions
from pipeline.ledger import split_decisions
from pipeline.runs import Run, StageResult, config_hash
from pipeline.sources import read_pool

log = logging.getLogger(__name__)


def run_ingest(spark, input_path: str, run_root: str, cfg: PipelineConfig, force: bool = False) -> StageResult:
    """Ingest `input_path` into `<run_root>/ingest` and the ledger; skip when already complete."""
    run = Run(spark, run_root)
    fingerprint = config_hash({"input": run.fs.qualify(input_path), "ingest": cfg.ingest.__dict__})
    if not force and run.is_complete("ingest", fingerprint):
        log.info("ingest: complete in %s with the same input and config; skipping", run.stage_dir("ingest"))
        return StageResult("ingest", run.stage_dir("ingest"), run.stats("ingest"), skipped=True)
    started = time.time()
    raw = read_pool(spark, input_path, cfg.ingest)
    decided = with_ingest_decisions(raw.df, cfg.ingest, raw.uid_given, raw.extras).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        kept, ledger = split_decisions(decided)
        kept = kept.select("uid", "url", "text", *[c for c in raw.extras if c in kept.columns])
        return run.commit(
            "ingest",
            kept,
            ledger,
            fingerprint,
            extra_stats={"input": input_path, "format": raw.fmt, "uid_column": raw.uid_given},
            output_partitions=cfg.ingest.output_partitions,
            started=started,
        )
    finally:
        decided.unpersist()
