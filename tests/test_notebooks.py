"""The analyst notebooks run top to bottom against a real run folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import build_text_run

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def small_run(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nbrun")
    words = ["dog", "cat", "bird", "tree", "car"]
    texts = [f"a {words[i % 5]} and a {words[(i * 7) % 5]}" for i in range(300)] + ["", "nothing at all"]
    columns = {"url": [f"http://a/{i}" for i in range(len(texts))], "text": texts}
    concepts = {"pet": ["dog", "cat"], "plant": ["tree"], "none": ["zebra"]}
    run = build_text_run(spark, tmp, columns, words + ["zebra"], concepts, t=60)
    from pipeline.api import run_report
    from pipeline.registry import PipelineConfig
    from pipeline.stages.report import ReportConfig

    run_report(spark, run, PipelineConfig(report=ReportConfig(concepts=str(tmp / "c.json"))))
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


def test_the_analyst_notebooks_are_there():
    names = {os.path.basename(str(p)) for p in NOTEBOOKS}
    assert {"long_tail_analysis.ipynb", "explore_subset.ipynb", "run_overview.ipynb"} <= names
