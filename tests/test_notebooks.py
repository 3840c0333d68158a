"""The analyst notebooks run top to bottom against a real run folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.api import run_balance, run_count, run_ingest, run_match
from pipeline.config import BalanceConfig, CountConfig, MatchConfig, PipelineConfig

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def small_run(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nbrun")
    words = ["dog", "cat", "bird", "tree", "car"]
    texts = [f"a {words[i % 5]} and a {words[(i * 7) % 5]}" for i in range(300)] + ["", "nothing at all"]
    pq.write_table(pa.table({"url": [f"http://a/{i}" for i in range(len(texts))], "text": texts}), tmp / "pool.parquet")
    (tmp / "m.json").write_text(json.dumps(words + ["zebra"]))
    (tmp / "c.json").write_text(json.dumps({"pet": ["dog", "cat"], "plant": ["tree"], "none": ["zebra"]}))
    cfg = PipelineConfig(
        match=MatchConfig(metadata=str(tmp / "m.json")), count=CountConfig(concepts=str(tmp / "c.json")), balance=BalanceConfig(t=60)
    )
    run = str(tmp / "run")
    run_ingest(spark, str(tmp / "pool.parquet"), run, cfg)
    run_match(spark, run, run, cfg)
    run_count(spark, run, run, cfg)
    run_balance(spark, run, None, run, cfg)
    return run


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(small_run, path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("CURATE_RUN", small_run)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    text = "\n".join(
        o.get("text", "") + json.dumps(o.get("data", {})) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "Error" not in text
    assert "302 uids entered" in text


def test_there_is_a_notebook():
    assert NOTEBOOKS, "notebooks/ holds the analyst notebooks"
    assert os.path.basename(str(NOTEBOOKS[0])).endswith(".ipynb")
