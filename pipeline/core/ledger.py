"""The decisions ledger: one row per uid per stage, kept or dropped with a reason."""

from __future__ import annotations

import itertools

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipeline.core import reasons as R
from pipeline.core.contracts import require_columns, select_contract
from pipeline.core.fs import RunFS

REASON = "_reason"
DETAIL = "_detail"


def split_decisions(decided: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Split a frame carrying `_reason`/`_detail` into (kept rows, ledger rows).

    Kept rows are those with a null `_reason`; the ledger has every row.
    """
    require_columns(decided, ("uid", REASON, DETAIL), "ledger")
    kept = decided.where(F.col(REASON).isNull()).drop(REASON, DETAIL)
    ledger = decided.select(
        F.col("uid"),
        F.when(F.col(REASON).isNull(), F.lit(R.KEPT)).otherwise(F.lit(R.DROPPED)).alias("decision"),
        F.col(REASON).alias("reason"),
        F.col(DETAIL).alias("detail"),
    )
    return kept, select_contract(ledger, "decisions")


def read_ledger(spark, run_root: str, stages: list[str] | None = None) -> DataFrame:
    """All ledger rows of a run, with the `stage` column, optionally for some stages only."""
    df = spark.read.option("basePath", f"{run_root}/decisions").parquet(f"{run_root}/decisions")
    if stages:
        df = df.where(F.col("stage").isin(stages))
    return df


def terminal_states(ledger: DataFrame, stage_order: list[str]) -> DataFrame:
    """Each uid's terminal state: its row from the latest stage (in `stage_order`) that saw it."""
    from pyspark.sql import Window

    rank = F.create_map(*[x for i, s in enumerate(stage_order) for x in (F.lit(s), F.lit(i))])
    w = Window.partitionBy("uid").orderBy(rank[F.col("stage")].desc())
    return ledger.withColumn("_n", F.row_number().over(w)).where(F.col("_n") == 1).drop("_n")


def check_accounting(spark, run_root: str, stage_order: list[str], first_stage: str = "ingest") -> dict:
    """The run's accounting invariant over the chain of stages `stage_order`:

    - every uid entering `first_stage` has exactly one terminal state (its last ledger row);
    - each stage decides exactly the uids the stage before it kept (nothing appears from
      nowhere, nothing dropped comes back, nothing kept is forgotten);
    - the uids kept at the end are exactly the last stage's output;
    - each stage's stats.json counts (rows in, kept, dropped per reason) equal its ledger's.

    Returns a summary; raises AssertionError naming the broken rule.
    """
    ledger = read_ledger(spark, run_root, stage_order).cache()
    terminal = terminal_states(ledger, stage_order).cache()
    try:  # a failed rule must not leave the cached (possibly stale) ledger behind for the next check
        n_inputs = _check_inputs(ledger, terminal, first_stage)
        _check_chain(ledger, stage_order)
        _check_stats(RunFS(spark), run_root, ledger, stage_order)
        _check_output(spark, run_root, terminal, stage_order[-1])
        dropped = terminal.where("decision = 'dropped'").groupBy("stage", "reason").count().collect()
    finally:
        ledger.unpersist()
        terminal.unpersist()
    by = {(r["stage"], r["reason"]): r["count"] for r in dropped}
    return {"inputs": n_inputs, "kept": n_inputs - sum(by.values()), "dropped": {f"{s}/{r}": n for (s, r), n in sorted(by.items())}}


def _check_inputs(ledger: DataFrame, terminal: DataFrame, first_stage: str) -> int:
    """Input uids are unique and each has one terminal state; returns their number."""
    inputs = ledger.where(F.col("stage") == first_stage).select("uid")
    n_inputs = inputs.count()
    if inputs.distinct().count() != n_inputs:
        raise AssertionError(f"{first_stage} ledger has repeated uids")
    n_terminal = terminal.count()
    if n_terminal != n_inputs:
        raise AssertionError(f"{n_terminal} uids have a terminal state but {n_inputs} entered {first_stage}")
    return n_inputs


def _check_chain(ledger: DataFrame, stage_order: list[str]) -> None:
    """Each stage decides exactly the uids the stage before it kept."""
    for before, stage in itertools.pairwise(stage_order):
        decided = ledger.where(F.col("stage") == stage).select("uid")
        handed = ledger.where((F.col("stage") == before) & (F.col("decision") == "kept")).select("uid")
        extra, lost = decided.exceptAll(handed).count(), handed.exceptAll(decided).count()
        if extra or lost:
            raise AssertionError(
                f"{stage} decided {extra} uids that {before} did not keep and missed {lost} that it kept"
            )


def _check_output(spark, run_root: str, terminal: DataFrame, last: str) -> None:
    """The uids kept at the end are exactly the last stage's output."""
    stray = terminal.where((F.col("decision") == "kept") & (F.col("stage") != last)).count()
    if stray:
        raise AssertionError(f"{stray} uids were kept by an earlier stage but never reached {last}")
    kept = terminal.where(F.col("decision") == "kept").select("uid")
    output = spark.read.parquet(f"{run_root}/{last}/data").select("uid")
    if kept.exceptAll(output).count() or output.exceptAll(kept).count():
        raise AssertionError(f"kept uids in the ledger differ from {last}'s output")


def _check_stats(fs: RunFS, run_root: str, ledger: DataFrame, stage_order: list[str]) -> None:
    """Each stage's stats.json counts equal its ledger rows."""
    counted: dict[str, dict] = {s: {"kept": 0, "dropped": {}} for s in stage_order}
    for r in ledger.groupBy("stage", "decision", "reason").count().collect():
        if r["decision"] == "kept":
            counted[r["stage"]]["kept"] += r["count"]
        else:
            counted[r["stage"]]["dropped"][r["reason"]] = r["count"]
    for stage, c in counted.items():
        stats = fs.read_json(f"{run_root}/{stage}/stats.json")
        claimed = {"rows_in": stats.get("rows_in"), "kept": stats.get("kept"), "dropped": stats.get("dropped")}
        actual = {"rows_in": c["kept"] + sum(c["dropped"].values()), "kept": c["kept"], "dropped": c["dropped"]}
        if claimed != actual:
            raise AssertionError(f"{stage}/stats.json says {claimed} but its ledger has {actual}")
