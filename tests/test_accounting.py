"""The ledger accounting check: each of its rules, broken alone in a copy of one real text-path run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.api import run_balance, run_count, run_ingest, run_match
from pipeline.core.ledger import check_accounting
from pipeline.registry import PipelineConfig
from pipeline.stages.balance import BalanceConfig
from pipeline.stages.match import MatchConfig

CHAIN = ["ingest", "match", "balance"]  # count decides no rows, so it has no ledger
# 17 texts: one empty (ingest drops it), two that match nothing (match drops them), one cat and
# one bird (count 1 <= t, so p = 1: balance keeps them whatever the draws) and twelve dogs
# (count 12 > t = 2, p = 1/6: balance drops most of them).
POOL = (
    [("e0", ""), ("n0", "nothing here"), ("n1", "(dog)"), ("c0", "a cat"), ("b0", "a bird")]
    + [(f"d{i:02d}", f"dog number {i}") for i in range(12)]
)
CERTAIN = {"c0", "b0"}


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory) -> Path:
    """One run through ingest, match, count and balance; each test works on its own copy."""
    tmp = tmp_path_factory.mktemp("accounting")
    pq.write_table(
        pa.table({"uid": [u for u, _ in POOL], "url": [f"http://a/{u}.jpg" for u, _ in POOL], "text": [t for _, t in POOL]}),
        tmp / "pool.parquet",
    )
    (tmp / "m.json").write_text(json.dumps(["dog", "cat", "bird"]))
    cfg = PipelineConfig(seed=5, match=MatchConfig(metadata=str(tmp / "m.json")), balance=BalanceConfig(t=2))
    run = str(tmp / "run")
    run_ingest(spark, str(tmp / "pool.parquet"), run, cfg)
    run_match(spark, run, run, cfg)
    run_count(spark, run, run, cfg)
    run_balance(spark, run, None, run, cfg)
    return Path(run)


@pytest.fixture
def run(built, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(built, copy)
    return copy


def ledger(run: Path, stage: str) -> pa.Table:
    return pq.read_table(run / "decisions" / f"stage={stage}")


def uids(table: pa.Table, decision: str | None = None) -> set[str]:
    if decision is not None:
        table = table.filter(pc.equal(table["decision"], decision))
    return set(table["uid"].to_pylist())


def rewrite(folder: Path, table: pa.Table) -> None:
    """Replace a Parquet folder's files with `table`, dropping Hadoop's checksums of the old ones."""
    for f in folder.iterdir():
        if f.suffix == ".parquet" or f.name.endswith(".crc"):
            f.unlink()
    pq.write_table(table, folder / "part-tampered.parquet")


def rewrite_stats(run: Path, stage: str, change) -> dict:
    path = run / stage / "stats.json"
    stats = json.loads(path.read_text())
    change(stats)
    (path.parent / ".stats.json.crc").unlink(missing_ok=True)  # Hadoop's checksum of the old bytes
    path.write_text(json.dumps(stats, sort_keys=True))
    return stats


def rows_of(table: pa.Table, uid_set: set[str]) -> pa.Table:
    return table.filter(pc.is_in(table["uid"], pa.array(sorted(uid_set))))


def breaks(spark, run: Path, message: str) -> None:
    """check_accounting fails with exactly `message`."""
    with pytest.raises(AssertionError) as caught:
        check_accounting(spark, str(run), CHAIN)
    assert str(caught.value) == message


def balance_split(run: Path) -> tuple[set[str], set[str]]:
    b = ledger(run, "balance")
    return uids(b, "kept"), uids(b, "dropped")


def test_the_built_run_has_kept_and_dropped_rows_at_every_stage_and_passes(spark, run):
    assert uids(ledger(run, "ingest"), "dropped") == {"e0"}
    assert uids(ledger(run, "match"), "dropped") == {"n0", "n1"}
    kept, dropped = balance_split(run)
    assert CERTAIN <= kept and dropped and kept | dropped == {u for u, _ in POOL} - {"e0", "n0", "n1"}
    assert set(pq.read_table(run / "balance" / "data")["uid"].to_pylist()) == kept
    summary = check_accounting(spark, str(run), CHAIN)
    assert summary == {
        "inputs": 17,
        "kept": len(kept),
        "dropped": {"balance/balanced_out": len(dropped), "ingest/empty_text": 1, "match/no_concept_match": 2},
    }


# --- every uid entering ingest has exactly one terminal state ---------------------------------


def test_a_repeated_input_uid(spark, run):
    table = ledger(run, "ingest")
    rewrite(run / "decisions" / "stage=ingest", pa.concat_tables([table, rows_of(table, {"e0"})]))
    breaks(spark, run, "ingest ledger has repeated uids")


def test_a_uid_with_a_terminal_state_that_never_entered(spark, run):
    table = ledger(run, "balance")
    ghost = rows_of(table, {"c0"}).set_column(0, "uid", pa.array(["ghost"]))
    rewrite(run / "decisions" / "stage=balance", pa.concat_tables([table, ghost]))
    breaks(spark, run, "18 uids have a terminal state but 17 entered ingest")


def test_a_uid_with_two_terminal_states(spark, run):
    # e0 was dropped by ingest; a second end, dropped again by match, is one too many.
    match = ledger(run, "match")
    again = rows_of(ledger(run, "ingest"), {"e0"}).cast(match.schema)
    rewrite(run / "decisions" / "stage=match", pa.concat_tables([match, again]))
    breaks(spark, run, "match decided 1 uids that ingest did not keep and missed 0 that it kept")


def test_a_uid_decided_twice_by_one_stage(spark, run):
    table = ledger(run, "balance")
    _, dropped = balance_split(run)
    twice = rows_of(table, {min(dropped)}).set_column(1, "decision", pa.array(["kept"])).set_column(
        2, "reason", pa.nulls(1, pa.string())
    )
    rewrite(run / "decisions" / "stage=balance", pa.concat_tables([table, twice.cast(table.schema)]))
    breaks(spark, run, "balance decided 1 uids that match did not keep and missed 0 that it kept")


# --- each stage decides exactly the uids the stage before it kept ---------------------------


def test_a_stage_decides_a_uid_its_predecessor_did_not_keep(spark, run):
    table = ledger(run, "balance")
    revived = rows_of(ledger(run, "match"), {"n0"}).cast(table.schema)
    rewrite(run / "decisions" / "stage=balance", pa.concat_tables([table, revived]))
    breaks(spark, run, "balance decided 1 uids that match did not keep and missed 0 that it kept")


def test_a_stage_misses_a_uid_its_predecessor_kept(spark, run):
    # A uid balance dropped, so its output stays as it was: only the ledger row is lost.
    _, dropped = balance_split(run)
    table = ledger(run, "balance")
    rewrite(run / "decisions" / "stage=balance", table.filter(pc.invert(pc.equal(table["uid"], min(dropped)))))
    breaks(spark, run, "balance decided 0 uids that match did not keep and missed 1 that it kept")


# --- each stage's stats.json counts equal its ledger's -----------------------------------------


def _wrong_rows_in(stats):
    stats["rows_in"] += 1


def _wrong_kept(stats):
    stats["kept"] -= 1


def _wrong_reason(stats):
    # The same total under another reason: only the per-reason split is wrong.
    (reason, n), = stats["dropped"].items()
    stats["dropped"] = {"not_" + reason: n}


@pytest.mark.parametrize("stage", CHAIN)
@pytest.mark.parametrize("change", [_wrong_rows_in, _wrong_kept, _wrong_reason], ids=["rows_in", "kept", "dropped"])
def test_stats_that_disagree_with_the_ledger(spark, run, stage, change):
    table = ledger(run, stage)
    kept = len(uids(table, "kept"))
    (reason,) = set(table.filter(pc.equal(table["decision"], "dropped"))["reason"].to_pylist())
    actual = {"rows_in": table.num_rows, "kept": kept, "dropped": {reason: table.num_rows - kept}}
    stats = rewrite_stats(run, stage, change)
    claimed = {"rows_in": stats["rows_in"], "kept": stats["kept"], "dropped": stats["dropped"]}
    assert claimed != actual
    breaks(spark, run, f"{stage}/stats.json says {claimed} but its ledger has {actual}")


# --- the uids kept at the end are exactly the last stage's output -------------------------------


def test_a_uid_kept_by_an_earlier_stage_that_never_reached_the_last(spark, run):
    # Its balance row is gone, so its last row says "kept by match". The chain rule fires first
    # in check_accounting; the output rule must also see it on its own.
    from pipeline.core.ledger import _check_output, read_ledger, terminal_states

    table = ledger(run, "balance")
    rewrite(run / "decisions" / "stage=balance", table.filter(pc.invert(pc.equal(table["uid"], "c0"))))
    breaks(spark, run, "balance decided 0 uids that match did not keep and missed 1 that it kept")
    terminal = terminal_states(read_ledger(spark, str(run), CHAIN), CHAIN)
    with pytest.raises(AssertionError) as caught:
        _check_output(spark, str(run), terminal, "balance")
    assert str(caught.value) == "1 uids were kept by an earlier stage but never reached balance"


def _missing(data: pa.Table, dropped: set[str]) -> pa.Table:
    return data.filter(pc.invert(pc.equal(data["uid"], "c0")))


def _extra(data: pa.Table, dropped: set[str]) -> pa.Table:
    stray = rows_of(data, {"c0"}).set_column(0, "uid", pa.array([min(dropped)]))
    return pa.concat_tables([data, stray])


def _twice(data: pa.Table, dropped: set[str]) -> pa.Table:
    return pa.concat_tables([data, rows_of(data, {"c0"})])


@pytest.mark.parametrize("change", [_missing, _extra, _twice], ids=["kept-uid-missing", "dropped-uid-present", "kept-uid-twice"])
def test_an_output_that_differs_from_the_kept_uids(spark, run, change):
    data = pq.read_table(run / "balance" / "data")
    _, dropped = balance_split(run)
    rewrite(run / "balance" / "data", change(data, dropped))
    breaks(spark, run, "kept uids in the ledger differ from balance's output")

