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
