"""Filter stage: DataComp's baseline rules, language, image size, CLIP score and exact image duplicates.

Each rule is off unless configured. A row is dropped by the first rule it fails, in this order:
caption (words, characters), language, image size and aspect ratio, CLIP-score threshold, exact
image duplicates, CLIP-score top fraction (of the rows that reach it). Its ledger detail holds the
value that failed (`clip score 0.193 < 0.28`, `language de (0.97)`).

Reads the nearest complete upstream among embed, download, balance, match and ingest. Sizes and
sha256 come from the input's own columns (a pool's `original_width`/`original_height`, ingest's
`width`/`height`, a `sha256` column) or else from the run's download stage (the original sizes
img2dataset reports, not the resized ones); the CLIP score from a named column or else the cosine
of the embed stage's image and text embeddings.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from pipeline.core import reasons as R
from pipeline.core.config import ConfigError
from pipeline.core.protocol import Context, Input, Output, Plan, Stage

log = logging.getLogger(__name__)

# The rules each preset stands for; keys set beside a preset override it.
PRESETS: dict[str, dict[str, Any]] = {
    # DataComp's "basic" baseline: English (top-1 language), more than 2 words and more than 5
    # characters, shortest side >= 200 px, aspect ratio <= 3 (original sizes).
    "datacomp_basic": {"languages": ("en",), "min_words": 3, "min_chars": 6, "min_side": 200, "max_aspect": 3.0},
    # LAION-2B-en's filter: CLIP ViT-B/32 image-text cosine >= 0.28, English captions.
    "laion2b": {"languages": ("en",), "clip_score_min": 0.28},
}
SIZE_COLUMNS = (("original_width", "original_height"), ("width", "height"))


@dataclass(frozen=True)
class FilterConfig:
    # A named set of rules (datacomp_basic, laion2b); keys set beside it override its values.
    preset: str | None = None
    # Keep captions with at least this many words (whitespace split). DataComp basic: 3 (> 2).
    min_words: int | None = None
    # Keep captions with at least this many characters. DataComp basic: 6 (> 5).
    min_chars: int | None = None
    # Keep captions identified as one of these languages (ISO 639-1 codes, e.g. en).
    languages: tuple[str, ...] = ()
    # ... and identified with at least this confidence (0 to 1).
    min_language_confidence: float = 0.0
    # Store language and language_confidence columns even without a language rule.
    detect_language: bool = False
    # Keep images whose shortest side is at least this many pixels (original size).
    min_side: int | None = None
    # Keep images whose longest / shortest side is at most this.
    max_aspect: float | None = None
    # The score column (e.g. DataComp's clip_b32_similarity_score); default: the cosine of the
    # embed stage's image and text embeddings.
    clip_score_column: str | None = None
    # Keep rows whose CLIP score is at least this.
    clip_score_min: float | None = None
    # Keep this fraction of the rows reaching the rule, highest scores first (ties: smaller uid).
    clip_score_top_fraction: float | None = None
    # Drop rows whose image bytes (sha256) equal a smaller uid's.
    dedup_images: bool = False

    def validate(self, where: str) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"{where}.preset: {self.preset!r} is not one of {', '.join(PRESETS)}")
        for name in ("min_words", "min_chars", "min_side"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{where}.{name}: must be >= 0, got {value}")
        if self.max_aspect is not None and self.max_aspect < 1.0:
            raise ConfigError(f"{where}.max_aspect: must be >= 1 (longest / shortest side), got {self.max_aspect}")
        if not 0.0 <= self.min_language_confidence <= 1.0:
            raise ConfigError(f"{where}.min_language_confidence: must be in [0, 1], got {self.min_language_confidence}")
        f = self.clip_score_top_fraction
        if f is not None and not 0.0 < f <= 1.0:
            raise ConfigError(f"{where}.clip_score_top_fraction: must be in (0, 1], got {f}")

    def resolved(self) -> FilterConfig:
        """The preset's rules filled in where this config leaves a key unset."""
        if self.preset is None:
            return self
        unset = {k: v for k, v in PRESETS[self.preset].items() if getattr(self, k) in (None, ())}
        return dataclasses.replace(self, **unset)


# --------------------------------------------------------------------------- the stage


def _missing(message: str, df) -> ConfigError:
    return ConfigError(f"{message}; present: {', '.join(df.columns)}")


def _size_columns(df) -> tuple[str, str] | None:
    return next(((w, h) for w, h in SIZE_COLUMNS if w in df.columns and h in df.columns), None)


def plan(ctx: Context) -> Plan:
    """The download stage, when its sizes or hashes are borrowed, is an input too."""
    cfg = ctx.cfg.resolved()
    ctx.state["cfg"] = cfg
    download = ctx.run.marker("download") if _needs_download(ctx, cfg) else None
    ctx.state["download"] = download
    return Plan(fingerprint={"rules": dataclasses.asdict(cfg), "download": download})


def _needs_download(ctx: Context, cfg: FilterConfig) -> bool:
    if ctx.input().stage == "download":
        return False
    df = ctx.spark.read.parquet(ctx.input().path)
    sizes = (cfg.min_side is not None or cfg.max_aspect is not None) and _size_columns(df) is None
    sha = cfg.dedup_images and "sha256" not in df.columns
    return (sizes or sha) and ctx.run.is_complete("download")


def run(ctx: Context) -> Output:
    from pyspark.sql import functions as F

    from pipeline.core.contracts import require_columns

    cfg: FilterConfig = ctx.state["cfg"]
    spark = ctx.spark
    source = ctx.input().path
    df = spark.read.parquet(source)
    require_columns(df, ("uid",), "filter")
    output_columns = list(df.columns)
    stats: dict[str, Any] = {"input": source, "rules": _rules(cfg)}

    # Borrowed columns: sizes and sha256 from the download stage of this run.
    if ctx.state["download"] is not None:
        borrowed = [c for c in ("original_width", "original_height", "sha256") if c not in df.columns]
        dl = spark.read.parquet(ctx.run.data_dir("download")).select("uid", *borrowed)
        df = df.join(dl, on="uid", how="left")
        stats["sizes_from"] = ctx.run.data_dir("download")

    need_text = cfg.min_words is not None or cfg.min_chars is not None or cfg.languages or cfg.detect_language
    if need_text:
        require_columns(df, ("text",), "filter (caption and language rules)")
        df = with_caption_features(df, language=bool(cfg.languages or cfg.detect_language))
        if cfg.languages or cfg.detect_language:
            output_columns += ["language", "language_confidence"]
            from pipeline.kernels.langid import model_info

            stats["language_model"] = model_info()

    reason, detail = F.lit(None).cast("string"), F.lit(None).cast("string")

    def rule(failed, why: str, said) -> None:
        nonlocal reason, detail
        first = reason.isNull() & failed
        reason = F.when(first, F.lit(why)).otherwise(reason)
        detail = F.when(first, said).otherwise(detail)

    if cfg.min_words is not None:
        rule(F.col("_words") < cfg.min_words, R.CAPTION_TOO_SHORT, F.format_string(f"%d words < {cfg.min_words}", "_words"))
    if cfg.min_chars is not None:
        rule(F.col("_chars") < cfg.min_chars, R.CAPTION_TOO_SHORT, F.format_string(f"%d characters < {cfg.min_chars}", "_chars"))
    if cfg.languages:
        lang, conf = F.col("language"), F.col("language_confidence")
        wrong = lang.isNull() | ~lang.isin(list(cfg.languages)) | (conf < cfg.min_language_confidence)
        rule(wrong, R.WRONG_LANGUAGE, F.format_string("language %s (%.2f)", F.coalesce(lang, F.lit("unknown")), conf))

    if cfg.min_side is not None or cfg.max_aspect is not None:
        cols = _size_columns(df)
        if cols is None:
            raise _missing(
                "filter.min_side/max_aspect: no image sizes (original_width, original_height from the download "
                "stage, or the pool's width, height)", df,
            )
        w, h = F.col(cols[0]), F.col(cols[1])
        short, long_ = F.least(w, h), F.greatest(w, h)
        size = F.format_string("%dx%d", w, h)
        rule(w.isNull() | h.isNull(), R.NO_IMAGE_SIZE, F.lit(f"no {cols[0]}/{cols[1]}"))
        if cfg.min_side is not None:
            rule(short < cfg.min_side, R.IMAGE_TOO_SMALL, F.concat(size, F.format_string(f": shortest side %d < {cfg.min_side}", short)))
        if cfg.max_aspect is not None:
            aspect = long_.cast("double") / short.cast("double")
            rule(short <= 0, R.IMAGE_TOO_SMALL, F.concat(size, F.lit(": a side is 0")))
            rule(aspect > cfg.max_aspect, R.BAD_ASPECT_RATIO, F.concat(size, F.format_string(f": aspect %.2f > {cfg.max_aspect:g}", aspect)))

    use_score = cfg.clip_score_min is not None or cfg.clip_score_top_fraction is not None
    if use_score:
        df, score_name = with_clip_score(df, cfg.clip_score_column)
        stats["clip_score"] = score_name
        output_columns.append("clip_score")
        missing_score = F.col("clip_score").isNull() | F.isnan("clip_score")
        rule(missing_score, R.NO_CLIP_SCORE, F.lit(f"{score_name}: missing (null or NaN)"))
        if cfg.clip_score_min is not None:
            rule(
                F.col("clip_score") < cfg.clip_score_min, R.LOW_CLIP_SCORE,
                F.format_string(f"clip score %.4f < {cfg.clip_score_min:g}", "clip_score"),
            )

    decided = df.withColumn("_reason", reason).withColumn("_detail", detail)
    if cfg.dedup_images:
        if "sha256" not in decided.columns:
            raise _missing("filter.dedup_images: no sha256 column (from the download stage or the pool)", df)
        decided = with_image_duplicates(decided)
    if cfg.clip_score_top_fraction is not None:
        # The rule's threshold depends on every earlier decision: they are written once first.
        decided.write.parquet(ctx.scratch("decided"))
        decided = spark.read.parquet(ctx.scratch("decided"))
        decided, chosen = with_top_fraction(decided, cfg.clip_score_top_fraction)
        stats["clip_score_top_fraction"] = chosen
    keep = list(dict.fromkeys(output_columns))
    return Output(decided=decided.select(*keep, "_reason", "_detail"), stats=stats)


def _rules(cfg: FilterConfig) -> dict[str, Any]:
    """The rules in force, as stats show them."""
    out = {k: v for k, v in dataclasses.asdict(cfg).items() if v not in (None, (), False)}
    if not cfg.languages:
        out.pop("min_language_confidence", None)
    return out


def with_caption_features(df, language: bool):
    """Add `_words`, `_chars` (DataComp's measures) and, with `language`, `language` and `language_confidence`."""
    import pyarrow as pa
    from pyspark.sql import types as T

    from pipeline.kernels.datacomp import caption_counts

    fields = [T.StructField("_words", T.IntegerType(), False), T.StructField("_chars", T.IntegerType(), False)]
    if language:
        # The rule judges by lid.176, as DataComp did: a language column the pool or the
        # worldwide match brought is replaced (metadata_language stays).
        df = df.drop("language", "language_confidence")
        fields += [T.StructField("language", T.StringType(), True), T.StructField("language_confidence", T.FloatType(), False)]
    schema = T.StructType(df.schema.fields + fields)
    text_i = df.columns.index("text")

    def measure(batches):
        if language:
            from pipeline.kernels.langid import identify
        for batch in batches:
            texts = batch.column(text_i).to_pylist()
            words, chars = caption_counts(texts)
            cols = [*batch.columns, pa.array(words, pa.int32()), pa.array(chars, pa.int32())]
            names = [*batch.schema.names, "_words", "_chars"]
            if language:
                codes, conf = identify(texts)
                cols += [pa.array(codes, pa.string()), pa.array(conf, pa.float32())]
                names += ["language", "language_confidence"]
            yield pa.RecordBatch.from_arrays(cols, names=names)

    return df.mapInArrow(measure, schema)


def with_clip_score(df, column: str | None):
    """Add `clip_score` from `column`, or the cosine of image_embedding and text_embedding."""
    from pyspark.sql import functions as F

    if column is not None:
        if column not in df.columns:
            raise _missing(f"filter.clip_score_column: no column {column}", df)
        return df.withColumn("clip_score", F.col(column).cast("double")), column
    if "image_embedding" not in df.columns or "text_embedding" not in df.columns:
        raise _missing(
            "filter.clip_score_min/top_fraction: no image_embedding and text_embedding (run the embed stage "
            "first) and no filter.clip_score_column", df,
        )
    def total(values):  # a sum in float64, in array order: the same on any partitioning
        return F.aggregate(values, F.lit(0.0).cast("double"), lambda acc, x: acc + x)

    img = F.transform("image_embedding", lambda a: a.cast("double"))
    txt = F.transform("text_embedding", lambda a: a.cast("double"))
    dot = total(F.zip_with(img, txt, lambda a, b: a * b))
    norm = F.sqrt(total(F.transform(img, lambda a: a * a)) * total(F.transform(txt, lambda a: a * a)))
    both = F.col("image_embedding").isNotNull() & F.col("text_embedding").isNotNull() & (norm > 0)
    return df.withColumn("clip_score", F.when(both, dot / norm)), "cosine(image_embedding, text_embedding)"


def with_image_duplicates(decided):
    """Among rows still kept, the same sha256 twice: the smallest uid stays, the others are duplicate_image."""
    from pyspark.sql import functions as F

    live = F.col("_reason").isNull() & F.col("sha256").isNotNull()
    # Rows out of the rule get a key of their own (their uid), so they spread over the join.
    key = F.when(live, F.concat(F.lit("h:"), F.col("sha256"))).otherwise(F.concat(F.lit("u:"), F.col("uid")))
    keyed = decided.withColumn("_dedup_key", key)
    first = keyed.where(live).groupBy("_dedup_key").agg(F.min("uid").alias("_first"))
    joined = keyed.join(first, on="_dedup_key", how="left")
    dup = live & (F.col("uid") != F.col("_first"))
    return joined.select(
        *[c for c in decided.columns if c not in ("_reason", "_detail")],
        F.when(dup, F.lit(R.DUPLICATE_IMAGE)).otherwise(F.col("_reason")).alias("_reason"),
        F.when(dup, F.concat(F.lit("same image bytes (sha256) as "), F.col("_first"))).otherwise(F.col("_detail")).alias("_detail"),
    )


def with_top_fraction(decided, fraction: float):
    """Keep floor(N x fraction) of the N rows still kept, by score (highest first), ties by smaller uid.

    Exact and the same on any partitioning: the rows are sorted by (score desc, uid) and the
    last kept one found by its index (a distributed sort, no collection of the scores).
    """
    from pyspark.sql import functions as F

    live = decided.where(F.col("_reason").isNull()).select("clip_score", "uid")
    n = live.count()
    k = int(n * fraction)
    chosen: dict[str, Any] = {"fraction": fraction, "rows_reaching": n, "kept": k, "threshold": None, "threshold_uid": None}
    if k == 0:
        cut = F.lit(True)
    elif k >= n:
        cut = F.lit(False)
    else:
        ordered = live.orderBy(F.desc("clip_score"), F.asc("uid")).rdd.zipWithIndex()
        (score, uid), _ = ordered.filter(lambda pair: pair[1] == k - 1).first()
        chosen.update(threshold=float(score), threshold_uid=uid)
        s = F.col("clip_score")
        cut = (s < F.lit(score)) | ((s == F.lit(score)) & (F.col("uid") > F.lit(uid)))
    drop = F.col("_reason").isNull() & cut
    said = F.format_string(
        f"clip score %.4f outside the top {fraction:g} ({k} of {n}; threshold {chosen['threshold']})", "clip_score"
    )
    out = decided.withColumn("_detail", F.when(drop, said).otherwise(F.col("_detail"))).withColumn(
        "_reason", F.when(drop, F.lit(R.LOW_CLIP_SCORE)).otherwise(F.col("_reason"))
    )
    return out, chosen


STAGE = Stage(
    name="filter",
    config=FilterConfig,
    run=run,
    plan=plan,
    help="DataComp-style filters: caption length, language, image size, CLIP score, exact image duplicates",
    inputs=(
        Input(
            "input", ("embed", "download", "balance", "match", "ingest"),
            "a run folder (its nearest complete stage among embed, download, balance, match, ingest) or Parquet with uid",
        ),
    ),
)
