"""`curate run`: the enabled stages in order, complete ones skipped, --from, and its errors."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pipeline.api import RunError, run_pipeline
from pipeline.cli import main
from pipeline.core.config import ConfigError
from pipeline.registry import TEXT_STAGES, load_config
from tests.pipeline_runs import complete_stages, snapshot


def marker_times(run_dir) -> dict[str, int]:
    """When each stage's marker was last written (the report's is reports/_COMPLETE): unchanged means not redone."""
    return {p.parent.name: p.stat().st_mtime_ns for p in run_dir.glob("*/_COMPLETE")}


@pytest.fixture(scope="module")
def first_run(text_path_run):
    return text_path_run


def test_runs_every_enabled_stage_in_order_like_the_stage_by_stage_api(spark, first_run):
    from pipeline.api import run_balance, run_count, run_ingest, run_match

    result, cfg = first_run["result"], first_run["cfg"]
    assert list(result.results) == list(TEXT_STAGES)
    assert not any(r.skipped for r in result.results.values())
    assert result.lineage == ["ingest", "match", "balance"]
    assert result.accounting["inputs"] == 150
    assert complete_stages(first_run["run"]) == ["balance", "count", "ingest", "match", "reports"]
    assert (first_run["run"] / "reports" / "report.html").is_file()

    # The same stages called one by one, as `curate ingest`, `curate match`, ... do.
    by_hand = str(first_run["tmp"] / "by-hand")
    run_ingest(spark, first_run["pool"], by_hand, cfg)
    run_match(spark, by_hand, by_hand, cfg)
    run_count(spark, by_hand, by_hand, cfg)
    run_balance(spark, by_hand, None, by_hand, cfg)
    assert first_run["snapshot"] == snapshot(by_hand)


def test_rerun_skips_complete_stages_and_from_redoes_the_rest(spark, first_run):
    run_dir, cfg = first_run["run"], first_run["cfg"]
    before, want = marker_times(run_dir), snapshot(run_dir)

    again = run_pipeline(spark, cfg)
    assert all(r.skipped for r in again.results.values())
    assert marker_times(run_dir) == before
    assert again.accounting == first_run["result"].accounting

    forced = run_pipeline(spark, cfg, from_stage="balance")
    assert [s for s, r in forced.results.items() if not r.skipped] == ["balance", "report"]
    after = marker_times(run_dir)
    assert {s for s in after if after[s] != before[s]} == {"balance", "reports"}
    assert snapshot(run_dir) == want  # same seed, same subset

    # A changed config redoes its stage and everything after it, nothing before.
    cfg2 = dataclasses.replace(cfg, balance=dataclasses.replace(cfg.balance, t=2))
    changed = run_pipeline(spark, cfg2)
    assert [s for s, r in changed.results.items() if not r.skipped] == ["balance", "report"]
    assert json.loads((run_dir / "balance" / "stats.json").read_text())["t"] == 2
    assert changed.accounting["kept"] < first_run["result"].accounting["kept"]


def test_a_stage_reads_an_upstream_from_an_earlier_invocation(spark, first_run):
    cfg = first_run["cfg"]
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, stages=("balance", "report")))
    result = run_pipeline(spark, cfg, from_stage="balance")
    assert list(result.results) == ["balance", "report"] and not result.results["balance"].skipped
    assert result.lineage == ["ingest", "match", "balance"]  # accounting still spans the whole path
    assert result.accounting == first_run["result"].accounting


def test_errors_are_one_line_and_name_the_fix(spark, first_run, tmp_path, capsys):
    cfg = first_run["cfg"]
    with pytest.raises(RunError, match=r"stage balance needs the output of match: add it to run.stages"):
        run_pipeline(spark, dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output=str(tmp_path / "new"), stages=("balance",))))
    with pytest.raises(RunError, match=r"--from embed: not one of the enabled stages"):
        run_pipeline(spark, cfg, from_stage="embed")
    with pytest.raises(RunError, match=r"run.output: no run folder"):
        run_pipeline(spark, dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output=None)))
    with pytest.raises(RunError, match=r"run.input: no pool given"):
        run_pipeline(spark, dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, input=None)))
    with pytest.raises(ConfigError, match=r"config.run.stages: unknown stage 'dedup'; stages are ingest, match"):
        load_config(None, {"run.stages": ["ingest", "dedup"]})

    assert main(["run", "--config", str(first_run["config"]), "--output", str(tmp_path / "r"), "--stages", "ingest,dedup"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown stage 'dedup'" in err


def test_resolved_config_round_trips(first_run, tmp_path):
    from pipeline.api import write_resolved_config

    path = write_resolved_config(first_run["cfg"], str(tmp_path / "resolved.yaml"))
    assert load_config(path) == first_run["cfg"]
