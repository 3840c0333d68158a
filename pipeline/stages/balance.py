"""MetaCLIP balancing: entries with count > t are sampled down to about t, deterministically.

Each entry gets p = min(1, t / count); a text with matched entries S is kept with probability
1 - prod_{i in S} (1 - p_i) ("Demystifying CLIP Data", Algorithm 1): it is kept when any of
its entries draws u < p. Every u comes from a hash of (seed, uid, entry id), never from a
generator with state, so the subset is the same on any partitioning and any cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.config import ConfigError
from pipeline.core.protocol import Context, Input, Output, Plan, Stage
from pipeline.kernels.sampling import (
    balance_batch,
    keep_probabilities,
    threshold_for_tail_fraction,
)


@dataclass(frozen=True)
class BalanceConfig:
    # MetaCLIP's threshold t (20k for 400M of a 1.6B pool, 170k for 2.5B) ...
    t: int | None = None
    # ... or the share of all matches that falls in entries with count < t (MetaCLIP 2).
    tail_fraction: float | None = None

    def validate(self, where: str) -> None:
        if self.t is not None and self.tail_fraction is not None:
            raise ConfigError(f"{where}: give either t or tail_fraction, not both")
        if self.t is not None and self.t < 1:
            raise ConfigError(f"{where}.t: must be >= 1, got {self.t}")
        if self.tail_fraction is not None and not 0.0 < self.tail_fraction <= 1.0:
            raise ConfigError(f"{where}.tail_fraction: must be in (0, 1], got {self.tail_fraction}")


# --- Spark adapter -------------------------------------------------------------------------


def with_balance_decisions(df, p: np.ndarray, seed: int, t: float):
    """Needs: uid, entry_ids. Adds: keep_prob, _reason ('balanced_out' when not drawn), _detail."""
    import pyarrow as pa
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from pipeline.core import reasons as R
    from pipeline.core.contracts import require_columns

    require_columns(df, ("uid", "entry_ids"), "balance")
    shared = df.sparkSession.sparkContext.broadcast(np.asarray(p, np.float64))
    uid_i, ids_i = df.columns.index("uid"), df.columns.index("entry_ids")
    schema = T.StructType(
        df.schema.fields + [T.StructField("keep_prob", T.DoubleType(), False), T.StructField("_keep", T.BooleanType(), False)]
    )

    def run(batches):
        probs = shared.value
        for batch in batches:
            ids = batch.column(ids_i)
            offsets = ids.offsets.to_numpy(zero_copy_only=False)
            offsets = offsets - offsets[0]
            values = ids.flatten().to_numpy(zero_copy_only=False)
            keep, prob = balance_batch(batch.column(uid_i).to_pylist(), offsets, values, probs, seed)
            yield pa.RecordBatch.from_arrays(
                [*batch.columns, pa.array(prob, pa.float64()), pa.array(keep, pa.bool_())],
                schema=batch.schema.append(pa.field("keep_prob", pa.float64(), False)).append(pa.field("_keep", pa.bool_(), False)),
            )

    out = df.mapInArrow(run, schema)
    return (
        out.withColumn("_reason", F.when(~F.col("_keep"), F.lit(R.BALANCED_OUT)))
        .withColumn("_detail", F.when(~F.col("_keep"), F.format_string(f"p_keep=%.6f at t={t:g}", F.col("keep_prob"))))
        .drop("_keep")
    )


# --------------------------------------------------------------------------- the stage


def plan(ctx: Context) -> Plan:
    """t comes from the count stage's entry counts (given, or from the tail fraction)."""
    cfg: BalanceConfig = ctx.cfg
    if (cfg.t is None) == (cfg.tail_fraction is None):
        raise ConfigError("balance: give exactly one of --t N or --tail-fraction F")
    rows = ctx.spark.read.parquet(ctx.input("counts").path).select("entry_id", "count").orderBy("entry_id").toPandas()
    counts = np.zeros(int(rows.entry_id.max()) + 1 if len(rows) else 0, np.int64)
    counts[rows.entry_id.to_numpy()] = rows["count"].to_numpy()
    if cfg.t is not None:
        t, tail_share = float(cfg.t), float(counts[counts < cfg.t].sum() / max(1, counts.sum()))
    else:
        t_int, tail_share = threshold_for_tail_fraction(counts, cfg.tail_fraction)
        t = float(t_int)
    ctx.state.update(counts=counts, t=t, tail_share=tail_share)
    return Plan(fingerprint={"t": t})


def run(ctx: Context) -> Output:
    """MetaCLIP balancing of the match output: each text kept with the probability its entries give it."""
    from pyspark.sql import functions as F

    cfg: BalanceConfig = ctx.cfg
    counts, t = ctx.state["counts"], ctx.state["t"]
    source = ctx.input().path
    decided = with_balance_decisions(ctx.spark.read.parquet(source), keep_probabilities(counts, t), ctx.seed, t)
    front = ["uid", "text", "entry_ids", "keep_prob"]

    def expected(rows) -> dict:
        return {"expected_kept": round(float(rows.agg(F.sum("keep_prob")).first()[0] or 0.0), 3)}

    return Output(
        decided=decided,
        shape=lambda kept: kept.select(*front, *[c for c in kept.columns if c not in front]),
        stats_from=expected,
        stats={
            "input": source,
            "counts": ctx.input("counts").path,
            "t": t,
            "t_from": "t" if cfg.t is not None else f"tail_fraction={cfg.tail_fraction}",
            "tail_share": ctx.state["tail_share"],
            "seed": ctx.seed,
            "head_entries": int((counts > t).sum()),
        },
    )


def describe(stats: dict, root: str) -> str:
    return f"t={stats['t']:g} ({stats['t_from']}), expected {stats['expected_kept']:.0f} kept"


STAGE = Stage(
    name="balance",
    config=BalanceConfig,
    run=run,
    plan=plan,
    describe=describe,
    help="MetaCLIP balancing: sample entries with count > t down to about t",
    inputs=(
        Input("input", ("match",), "a run folder (its match output) or a match stage folder"),
        Input("counts", ("count",), "the count stage's output: a run folder or a count stage folder"),
    ),
    schemas={"data": "balance"},
    seeded=True,
)
