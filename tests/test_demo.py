"""`curate demo` end to end: every stage, images fetched over HTTP from this machine, accounting holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.cli import main
from pipeline.registry import STAGES

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_every_stage_and_accounts_for_every_uid(spark, tmp_path, capsys):
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    assert cfg["run"]["stages"] == list(STAGES), "the demo shows the whole pipeline"
    cfg["demo"].update(rows=400, concepts=40)
    cfg["cluster"]["k"] = 4
    cfg["prune"]["inter_k"] = 2
    cfg["spark"]["master"] = "local[2]"
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["demo", "--config", str(path), "--output", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "demo" / "run"
    for stage in ("ingest", "match", "count", "balance", "download", "embed", "filter", "cluster", "prune", "export", "reports"):
        assert (run / stage / "_COMPLETE").is_file(), stage
    stats = {s: json.loads((run / s / "stats.json").read_text()) for s in ("balance", "download", "embed", "prune")}
    # The demo's images are fetched from the local server: every balanced row but the pool's
    # deliberately broken URLs is downloaded and embedded.
    assert stats["download"]["rows_in"] == stats["balance"]["kept"]
    assert stats["download"]["kept"] >= 0.95 * stats["download"]["rows_in"]
    assert stats["embed"]["kept"] == stats["download"]["kept"]
    assert 0 < stats["prune"]["kept"] < stats["prune"]["rows_in"]
    assert "accounting: each of 400 input uids has exactly one terminal state" in out
    assert (run / "reports" / "report.html").is_file()
    steps = json.loads((run / "reports" / "long_tail.json").read_text())
    assert set(steps) == {"matched", "balanced", "downloaded", "embedded", "filtered", "deduplicated", "pruned"}
    # It ends with training shards and DataComp's uid list of exactly the final rows.
    final = json.loads((run / "export" / "stats.json").read_text())
    assert final["kept"] == stats["prune"]["kept"] and final["uid_list"] == "uids.npy"
    assert len(np.load(run / "export" / "uids.npy")) == final["kept"] == final["shards"]["total"]
    assert sum(json.loads((run / "export" / "shards" / "sizes.json").read_text()).values()) == final["kept"]
    assert steps["pruned"]["total_matches"] < steps["deduplicated"]["total_matches"] <= steps["matched"]["total_matches"]
