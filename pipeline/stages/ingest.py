"""Ingest: normalise a raw pool to one schema with a stable uid, and decide every row."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from pipeline.core import reasons as R
from pipeline.core.config import ConfigError
from pipeline.core.contracts import require_columns
from pipeline.core.protocol import Context, Input, Output, Stage

GROUPINGS = ("none", "url", "image_hash")
INGEST_FORMATS = ("auto", "parquet", "csv", "tsv", "jsonl", "coco", "webdataset", "datacomp", "flickr", "mmc4")


@dataclass(frozen=True)
class IngestConfig:
    format: str = "auto"
    text_col: str | None = None
    url_col: str | None = None
    uid_col: str | None = None
    # Captions longer than this many characters are dropped (text_too_long): web pools carry
    # megabyte-long "alt-texts" that are page dumps, not captions.
    max_text_chars: int = 65536
    # Output files: Spark partitions of the written Parquet (0 = keep the input's).
    output_partitions: int = 0
    # With a uid column, rows under different uids can still be the same (url, text) pair:
    # keep the one with the smallest uid, drop the rest as duplicate_url_text.
    drop_duplicate_url_text: bool = True
    # The caption language column (LAION-2B-multi's LANGUAGE); found by name (language, lang)
    # when not given. Worldwide matching uses it instead of language ID.
    lang_col: str | None = None
    # Rows that show one image with several alt-texts: "url" groups rows with the same url,
    # "image_hash" rows with the same image hash column; each group gets one image_uid, and
    # balance keeps at most one text per image (MetaCLIP 2). "none" keeps every row its own image.
    group_alt_texts: str = "none"
    # The image hash column for group_alt_texts=image_hash (found as sha256, image_sha256, image_hash).
    image_hash_col: str | None = None

    def validate(self, where: str) -> None:
        if self.format not in INGEST_FORMATS:
            raise ConfigError(f"{where}.format: {self.format!r} is not one of {', '.join(INGEST_FORMATS)}")
        if self.max_text_chars < 1:
            raise ConfigError(f"{where}.max_text_chars: must be >= 1, got {self.max_text_chars}")
        if self.group_alt_texts not in GROUPINGS:
            raise ConfigError(f"{where}.group_alt_texts: {self.group_alt_texts!r} is not one of {', '.join(GROUPINGS)}")
        if self.output_partitions < 0:
            raise ConfigError(f"{where}.output_partitions: must be >= 0, got {self.output_partitions}")


RAW_COLUMNS = ("_uid_given", "url", "text", "image_ref", "_malformed", "_text_invalid_utf8")
UID_HEX_DIGITS = 32
# Blank means: only whitespace, separators, zero-width characters or a byte-order mark.
BLANK_PATTERN = r"^[\s\p{Z}\x{200B}-\x{200D}\x{2060}\x{FEFF}]*$"
DETAIL_CHARS = 200


def content_hash(url: Column, text: Column) -> Column:
    """sha256 over (url, text) with nulls told apart from empty strings; first 32 hex digits."""

    def part(c: Column, tag: str) -> Column:
        return F.coalesce(F.concat(F.lit(tag + ":"), c), F.lit(tag + "!"))

    return F.substring(F.sha2(F.concat(part(url, "u"), F.lit("\x1f"), part(text, "t")), 256), 1, UID_HEX_DIGITS)


def with_ingest_decisions(raw: DataFrame, cfg: IngestConfig, uid_column: str | None, extras: tuple[str, ...] = ()) -> DataFrame:
    """Add `uid`, `_reason` (null = kept) and `_detail` to a raw pool frame.

    Needs: _uid_given, url, text, image_ref, _malformed, _text_invalid_utf8 (see pipeline.stages.sources).
    Adds: uid (unique over the frame), _reason, _detail. Duplicate uids keep one row,
    chosen by content so the choice does not depend on partitioning; the others are
    renamed '<uid>#dup<k>' and dropped.
    """
    require_columns(raw, RAW_COLUMNS, "ingest")
    url_or_image = F.coalesce(F.col("url"), F.col("image_ref"))
    hashed = content_hash(url_or_image, F.col("text"))
    malformed = F.col("_malformed").isNotNull()
    given = F.col("_uid_given")
    uid_missing = F.lit(uid_column is not None) & (given.isNull() | (F.trim(given) == ""))

    if uid_column is None:
        base_uid = hashed
    else:
        base_uid = F.when(uid_missing, F.concat(F.lit("missing-"), hashed)).otherwise(given)
    base_uid = F.when(
        malformed, F.concat(F.lit("malformed-"), F.substring(F.sha2(F.col("_malformed"), 256), 1, UID_HEX_DIGITS))
    ).otherwise(base_uid)

    text = F.col("text")
    blank = text.isNull() | text.rlike(BLANK_PATTERN)
    # Parquet strings reach us as their bytes, valid or not; readers that decode bytes themselves
    # say so in _text_invalid_utf8. A U+FFFD in valid text is a character like any other
    # (LAION has mojibake captions), so it is not a sign of invalid bytes.
    undecodable = F.col("_text_invalid_utf8") | ~F.is_valid_utf8(text)
    too_long = F.length(text) > F.lit(cfg.max_text_chars)
    no_target = (F.col("url").isNull() | (F.trim(F.col("url")) == "")) & F.col("image_ref").isNull()

    reason = (
        F.when(malformed, F.lit(R.MALFORMED_ROW))
        .when(uid_missing, F.lit(R.MISSING_UID))
        .when(blank, F.lit(R.EMPTY_TEXT))
        .when(undecodable, F.lit(R.UNDECODABLE_TEXT))
        .when(too_long, F.lit(R.TEXT_TOO_LONG))
        .when(no_target, F.lit(R.NO_URL_OR_IMAGE))
    )
    detail = (
        F.when(malformed, F.substring(F.col("_malformed"), 1, DETAIL_CHARS))
        .when(uid_missing, F.lit(f"uid column {uid_column!r} is null or blank; stand-in uid from url+text"))
        .when(blank, F.when(text.isNull(), F.lit("text is null")).otherwise(F.concat(F.lit("text is blank, length "), F.length(text))))
        .when(undecodable, F.lit("text is not valid UTF-8"))
        .when(too_long, F.concat(F.lit(f"text length > {cfg.max_text_chars}: "), F.length(text)))
    )
    df = raw.withColumn("_base_uid", base_uid).withColumn("_reason", reason).withColumn("_detail", detail)

    # One row per uid: prefer a row that survives, then order by content so the pick is total.
    order = [F.col("_reason").isNull().desc()] + [
        F.col(c).asc_nulls_first() for c in ("url", "text", "image_ref", "_malformed", *extras) if c in raw.columns
    ]
    rank = F.row_number().over(Window.partitionBy("_base_uid").orderBy(*order))
    dup_reason = R.DUPLICATE_UID if uid_column is not None else R.DUPLICATE_URL_TEXT
    df = df.withColumn("_rank", rank)
    is_dup = F.col("_rank") > 1
    df = (
        df.withColumn("uid", F.when(is_dup, F.concat("_base_uid", F.lit("#dup"), F.col("_rank").cast("string"))).otherwise(F.col("_base_uid")))
        .withColumn("_detail", F.when(is_dup & F.col("_reason").isNull(), F.concat(F.lit("duplicate of uid "), F.col("_base_uid"))).otherwise(F.col("_detail")))
        .withColumn("_reason", F.when(is_dup & F.col("_reason").isNull(), F.lit(dup_reason)).otherwise(F.col("_reason")))
        .drop("_base_uid", "_rank")
    )
    if uid_column is None or not cfg.drop_duplicate_url_text:
        return df  # without a uid column, equal (url, text) means equal uid: handled above
    # Surviving rows that share (url or image, text) under different uids: the smallest uid stays.
    same = Window.partitionBy(F.when(F.col("_reason").isNull(), hashed)).orderBy("uid")
    first = F.first("uid").over(same)
    dup = F.col("_reason").isNull() & (first != F.col("uid"))
    return (
        df.withColumn("_first", first)
        .withColumn("_detail", F.when(dup, F.concat(F.lit("same url and text as uid "), F.col("_first"))).otherwise(F.col("_detail")))
        .withColumn("_reason", F.when(dup, F.lit(R.DUPLICATE_URL_TEXT)).otherwise(F.col("_reason")))
        .drop("_first")
    )


# --------------------------------------------------------------------------- the stage


def run(ctx: Context) -> Output:
    """Read the pool in any supported format and decide every row."""
    from pipeline.stages.sources import read_pool

    cfg: IngestConfig = ctx.cfg
    source = ctx.input().path
    raw = read_pool(ctx.spark, source, cfg)
    decided = with_image_uid(with_ingest_decisions(raw.df, cfg, raw.uid_given, raw.extras), cfg.group_alt_texts)
    extras = [*raw.extras, "image_uid"]
    return Output(
        decided=decided,
        shape=lambda kept: kept.select("uid", "url", "text", *[c for c in extras if c in kept.columns]),
        partitions=cfg.output_partitions,
        stats={"input": source, "format": raw.fmt, "uid_column": raw.uid_given, "group_alt_texts": cfg.group_alt_texts},
    )


def with_image_uid(df: DataFrame, grouping: str) -> DataFrame:
    """`image_uid`, the same for every row showing one image: a hash of its url or of its image hash.

    A row without the url (or hash) it would be grouped by is its own image (its uid).
    """
    if grouping == "none":
        return df.drop("_image_hash")
    tag, key = ("u:", F.col("url")) if grouping == "url" else ("h:", F.col("_image_hash"))
    image = F.substring(F.sha2(F.concat(F.lit(tag), key), 256), 1, UID_HEX_DIGITS)
    blank = key.isNull() | (F.trim(key) == "")
    return df.withColumn("image_uid", F.when(blank, F.col("uid")).otherwise(image)).drop("_image_hash")


STAGE = Stage(
    name="ingest",
    config=IngestConfig,
    run=run,
    help="read a pool in any supported format into <output>/ingest",
    inputs=(Input("input", (), "the pool: a file or folder of Parquet, CSV/TSV, JSONL, COCO json, WebDataset tars, ..."),),
    schemas={"data": "ingest"},
)
