"""Shared fixtures: one local SparkSession for the whole test run, paths to the shared anchor data."""

from __future__ import annotations

from pathlib import Path

import pytest

ANCHORS = Path(__file__).resolve().parents[1].parent / "shared" / "anchors" / "data"


def anchor(rel: str) -> Path:
    """A file under ../shared/anchors/data; skips the test when it is absent."""
    path = ANCHORS / rel
    if not path.exists():
        pytest.skip(f"shared anchor data not present: {path}")
    return path


@pytest.fixture(scope="session")
def spark():
    from pipeline.config import SparkConfig
    from pipeline.spark import get_spark

    session = get_spark(
        SparkConfig(
            master="local[2]",
            driver_memory="2g",
            shuffle_partitions=4,
            conf={"spark.ui.showConsoleProgress": "false", "spark.sql.adaptive.enabled": "false"},
        ),
        app_name="curate-tests",
    )
    yield session
    session.stop()


def build_text_run(spark, tmp, columns: dict, entries: list[str], concepts: dict, t: int) -> str:
    """A run folder through ingest, match, count (with concepts) and balance at threshold t."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.api import run_balance, run_count, run_ingest, run_match
    from pipeline.config import BalanceConfig, CountConfig, MatchConfig, PipelineConfig

    pq.write_table(pa.table(columns), tmp / "pool.parquet")
    (tmp / "m.json").write_text(json.dumps(entries))
    (tmp / "c.json").write_text(json.dumps(concepts))
    cfg = PipelineConfig(
        match=MatchConfig(metadata=str(tmp / "m.json")), count=CountConfig(concepts=str(tmp / "c.json")), balance=BalanceConfig(t=t)
    )
    run = str(tmp / "run")
    run_ingest(spark, str(tmp / "pool.parquet"), run, cfg)
    run_match(spark, run, run, cfg)
    run_count(spark, run, run, cfg)
    run_balance(spark, run, None, run, cfg)
    return run


@pytest.fixture(scope="session")
def text_path_run(spark, tmp_path_factory):
    """One local-mode `curate run` of the text path on a small demo pool, shared by the runner,
    standalone-cluster and fault tests: its config, pool, run folder and a snapshot taken at once
    (tests that rerun stages in the folder must leave it as they found it)."""
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline
    from tests.pipeline_runs import snapshot, write_text_setup

    tmp = tmp_path_factory.mktemp("text-path-run")
    config, pool = write_text_setup(tmp, rows=150)
    cfg = load_config(config, {"run.output": str(tmp / "run")})
    result = run_pipeline(spark, cfg)
    return {"tmp": tmp, "config": config, "pool": pool, "cfg": cfg, "run": tmp / "run", "result": result, "snapshot": snapshot(tmp / "run")}
