"""MetaCLIP balancing: entries with count > t are sampled down to about t, deterministically.

Each entry gets p = min(1, t / count); a text with matched entries S is kept with probability
1 - prod_{i in S} (1 - p_i) ("Demystifying CLIP Data", Algorithm 1): it is kept when any of
its entries draws u < p. Every u comes from a hash of (seed, uid, entry id), never from a
generator with state, so the subset is the same on any partitioning and any cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    # Worldwide (per-language metadata): the language whose t is `t`; its tail share sets every
    # other language's t (MetaCLIP 2). With tail_fraction, every language follows that share.
    reference_language: str = "en"
    # Worldwide: fixed t for single languages ({"de": 5000}), over the rule above.
    t_by_language: dict[str, int] = field(default_factory=dict)
    # false: no draw here; every text (one per image) is kept with its keep_prob, for a training
    # loader that samples online each epoch (MetaCLIP 2) from the export's worldwide/ files.
    draw: bool = True

    def validate(self, where: str) -> None:
        for lang, value in self.t_by_language.items():
            if value < 1:
                raise ConfigError(f"{where}.t_by_language.{lang}: must be >= 1, got {value}")
        if self.t is not None and self.tail_fraction is not None:
            raise ConfigError(f"{where}: give either t or tail_fraction, not both")
        if self.t is not None and self.t < 1:
            raise ConfigError(f"{where}.t: must be >= 1, got {self.t}")
        if self.tail_fraction is not None and not 0.0 < self.tail_fraction <= 1.0:
            raise ConfigError(f"{where}.tail_fraction: must be in (0, 1], got {self.tail_fraction}")


# --- Spark adapter -------------------------------------------------------------------------


def with_balance_decisions(df, p: np.ndarray, seed: int, t: float | str, draw: bool = True):
    """Needs: uid, entry_ids. Adds: keep_prob, _reason ('balanced_out' when not drawn), _detail.

    With an `image_uid` column, one text per image is chosen first (MetaCLIP 2): the one with
    the smallest xxhash64(seed, uid), then uid; the others get 'alt_text_not_chosen'.
    """
    import pyarrow as pa
    from pyspark.sql import Window
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
    at_t = f"t={t:g}" if isinstance(t, (int, float)) else t
    drawn_out = ~F.col("_keep") & F.lit(draw)
    reason, detail = F.when(drawn_out, F.lit(R.BALANCED_OUT)), F.when(
        drawn_out, F.format_string(f"p_keep=%.6f at {at_t}", F.col("keep_prob"))
    )
    if "image_uid" in df.columns:
        image = Window.partitionBy("image_uid")
        order = image.orderBy(F.xxhash64(F.lit(seed), F.col("uid")), F.col("uid"))
        out = (
            out.withColumn("_rank", F.row_number().over(order))
            .withColumn("_chosen", F.first("uid").over(order))
            .withColumn("_texts", F.count(F.lit(1)).over(image))
        )
        other = F.col("_rank") > 1
        reason = F.when(other, F.lit(R.ALT_TEXT_NOT_CHOSEN)).otherwise(reason)
        detail = F.when(
            other, F.format_string("image %s: text %s chosen of %d", F.col("image_uid"), F.col("_chosen"), F.col("_texts"))
        ).otherwise(detail)
    return out.withColumn("_reason", reason).withColumn("_detail", detail).drop("_keep", "_rank", "_chosen", "_texts")


# --------------------------------------------------------------------------- the stage


def plan(ctx: Context) -> Plan:
    """t comes from the count stage's entry counts (given, or from the tail fraction); per language when worldwide."""
    cfg: BalanceConfig = ctx.cfg
    if (cfg.t is None) == (cfg.tail_fraction is None):
        raise ConfigError("balance: give exactly one of --t N or --tail-fraction F")
    table = ctx.spark.read.parquet(ctx.input("counts").path)
    with_language = "language" in table.columns
    rows = table.select("entry_id", "count", *(["language"] if with_language else [])).orderBy("entry_id").toPandas()
    counts = np.zeros(int(rows.entry_id.max()) + 1 if len(rows) else 0, np.int64)
    counts[rows.entry_id.to_numpy()] = rows["count"].to_numpy()
    meta = language_metadata(rows) if with_language and rows["language"].notna().any() else None
    if meta is not None:
        from pipeline.kernels.worldwide import (
            language_probabilities,
            language_thresholds,
            tail_share,
        )

        try:
            t_by, share = language_thresholds(
                counts, meta, cfg.t, cfg.tail_fraction, cfg.reference_language, cfg.t_by_language
            )
        except ValueError as exc:
            raise ConfigError(f"balance: {exc}") from None
        probs = language_probabilities(counts, meta, t_by)
        of = {lang: counts[slice(*meta.span(lang))] for lang in meta.languages}
        shares = {lang: tail_share(of[lang], t) if t is not None else None for lang, t in t_by.items()}
        ctx.state.update(
            probs=probs,
            t=float(cfg.t) if cfg.t is not None else t_by.get(cfg.reference_language),
            tail_share=shares.get(cfg.reference_language),
            worldwide={
                "reference_language": cfg.reference_language,
                "p": share,
                "t_by_language": t_by,
                "tail_share_by_language": shares,
                "head_entries_by_language": {
                    lang: int((of[lang] >= t).sum()) if t is not None else 0 for lang, t in t_by.items()
                },
            },
        )
        return Plan(fingerprint={"t_by_language": t_by})
    if cfg.t is not None:
        t, tail_share_ = float(cfg.t), float(counts[counts < cfg.t].sum() / max(1, counts.sum()))
    else:
        t_int, tail_share_ = threshold_for_tail_fraction(counts, cfg.tail_fraction)
        t = float(t_int)
    ctx.state.update(probs=keep_probabilities(counts, t), t=t, tail_share=tail_share_, worldwide=None, counts=counts)
    return Plan(fingerprint={"t": t})


def language_metadata(rows):
    """The languages' id ranges from a worldwide count table (entry_id, language), checked contiguous."""
    from pipeline.kernels.worldwide import LanguageMetadata

    languages = rows["language"].fillna("").to_numpy()
    if len(rows) and not np.array_equal(rows.entry_id.to_numpy(), np.arange(len(rows))):
        raise ValueError("count table: entry ids are not 0..n-1")
    change = np.flatnonzero(languages[1:] != languages[:-1]) + 1
    starts = [0, *change.tolist(), len(languages)]
    order = [str(languages[i]) for i in starts[:-1]]
    return LanguageMetadata(tuple(order), tuple(str(i) for i in range(len(languages))), tuple(starts))


def run(ctx: Context) -> Output:
    """MetaCLIP balancing of the match output: each text kept with the probability its entries give it."""
    from pyspark.sql import functions as F

    from pipeline.core import reasons as R

    cfg: BalanceConfig = ctx.cfg
    t, world = ctx.state["t"], ctx.state["worldwide"]
    source = ctx.input().path
    df = ctx.spark.read.parquet(source)
    decided = with_balance_decisions(df, ctx.state["probs"], ctx.seed, t if world is None else "its language's t", cfg.draw)
    front = ["uid", "text", "entry_ids", "keep_prob"]
    grouped = "image_uid" in df.columns

    def expected(rows) -> dict:
        chosen = rows.where(F.col("_reason").isNull() | (F.col("_reason") == R.BALANCED_OUT))
        out = {"expected_kept": round(float(chosen.agg(F.sum("keep_prob")).first()[0] or 0.0), 3)}
        if world is not None:
            kept = rows.where(F.col("_reason").isNull()).groupBy("metadata_language").count().collect()
            out["kept_by_language"] = dict(sorted((r[0], r[1]) for r in kept))
        if grouped:
            out["alt_texts"] = {
                "images": rows.select("image_uid").distinct().count(),
                "not_chosen": rows.where(F.col("_reason") == R.ALT_TEXT_NOT_CHOSEN).count(),
            }
        return out

    stats = {
        "input": source,
        "counts": ctx.input("counts").path,
        "t": t,
        "t_from": "t" if cfg.t is not None else f"tail_fraction={cfg.tail_fraction}",
        "tail_share": ctx.state["tail_share"],
        "seed": ctx.seed,
        "draw": cfg.draw,
        "head_entries": int(sum(world["head_entries_by_language"].values())) if world else int((ctx.state["counts"] > t).sum()),
    }
    if world is not None:
        stats.update(world)
    return Output(
        decided=decided,
        shape=lambda kept: kept.select(*front, *[c for c in kept.columns if c not in front]),
        stats_from=expected,
        stats=stats,
    )


def describe(stats: dict, root: str) -> str:
    t = f"t={stats['t']:g}" if stats.get("t") is not None else "t per language"
    languages = f", {len(stats['t_by_language'])} languages" if stats.get("t_by_language") else ""
    return f"{t} ({stats['t_from']}{languages}), expected {stats['expected_kept']:.0f} kept"


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
