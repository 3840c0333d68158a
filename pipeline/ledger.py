"""The decisions ledger: one row per uid per stage, kept or dropped with a reason."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipeline import reasons as R
from pipeline.contracts import require_columns, select_contract

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
