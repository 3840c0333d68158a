"""Readers for the pool formats people have, each returning one raw frame for the ingest stage.

A raw frame has `url`, `text`, `image_ref`, `_uid_given` (the user's uid or null),
`_malformed` (the raw record when the row could not be parsed, else null) and any extra
columns worth keeping (width, height, scores, source_key, license).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.config import IngestConfig
from pipeline.imageshards import IMAGE_EXTS

log = logging.getLogger(__name__)

TEXT_ALIASES = ("text", "caption", "alt_text", "alt+text", "alt", "title", "description", "sentence")
URL_ALIASES = ("url", "image_url", "img_url", "image_link", "link")
UID_ALIASES = ("uid",)
KEY_ALIASES = ("key", "id", "sample_id", "__index_level_0__")
WIDTH_ALIASES = ("width", "original_width", "image_width")
HEIGHT_ALIASES = ("height", "original_height", "image_height")
SCORE_PATTERN = re.compile(r"(similarity|score|_sim$)", re.IGNORECASE)
IMAGE_SUFFIXES = tuple(f".{ext}" for ext in IMAGE_EXTS)
CORRUPT = "_corrupt_record"
EXTRA_COLUMNS = ("width", "height", "image_ref", "source_key", "license")


class InputError(ValueError):
    """The input cannot be read as a pool: missing, empty, unknown format, no text column."""


@dataclass(frozen=True)
class RawPool:
    df: DataFrame
    fmt: str
    uid_given: str | None  # the uid column used, if any
    extras: tuple[str, ...]  # extra output columns present in df


def _local(path: str) -> str | None:
    if path.startswith("file://"):
        return path[len("file://") :]
    return None if "://" in path else path


def _list_files(path: str) -> list[str]:
    local = _local(path)
    if local is None:
        return [path]
    if not os.path.exists(local):
        raise InputError(f"input not found: {path}")
    if os.path.isfile(local):
        return [local]
    files = []
    for root, dirs, names in os.walk(local):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        files += [os.path.join(root, n) for n in sorted(names) if not n.startswith((".", "_"))]
    if not files:
        raise InputError(f"input is empty: {path} holds no data files")
    return files


def detect_format(path: str) -> str:
    files = _list_files(path)
    name = files[0].lower()
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    if name.endswith(".tsv"):
        return "tsv"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson")):
        head = _head_bytes(files[0], 1 << 16)
        return "mmc4" if b'"text_list"' in head and b'"image_info"' in head else "jsonl"
    if name.endswith(".tar"):
        return "webdataset"
    if name.endswith(".json"):
        head = _head_bytes(files[0], 4096).lstrip()
        if head.startswith(b"{") and b'"annotations"' in _head_bytes(files[0], 1 << 26):
            return "coco"
        return "jsonl"
    if name.endswith(".txt"):
        first = _head_bytes(files[0], 4096).split(b"\n", 1)[0]
        if re.match(rb"^\S+\.(jpg|jpeg|png)#\d+[\t ]", first, re.IGNORECASE):
            return "flickr"
        return "tsv"
    raise InputError(
        f"cannot tell the format of {files[0]}; pass --format (one of parquet, csv, tsv, jsonl, coco, webdataset, datacomp, flickr)"
    )


def _head_bytes(path: str, n: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _pick(columns: list[str], explicit: str | None, aliases: tuple[str, ...], what: str) -> str | None:
    if explicit:
        if explicit not in columns:
            raise InputError(f"{what} column {explicit!r} not found; columns present: {', '.join(columns)}")
        return explicit
    lower = {c.lower(): c for c in columns}
    for alias in aliases:
        if alias in lower:
            return lower[alias]
    return None


def _normalise(df: DataFrame, cfg: IngestConfig, fmt: str, force_uid: str | None = None) -> RawPool:
    """Map a frame with arbitrary column names onto the raw-pool columns."""
    cols = [c for c in df.columns if c != CORRUPT]
    text_c = _pick(cols, cfg.text_col, TEXT_ALIASES, "text")
    if text_c is None:
        raise InputError(
            f"no text column found (looked for {', '.join(TEXT_ALIASES)}); columns present: {', '.join(cols)}; pass --text-col"
        )
    url_c = _pick(cols, cfg.url_col, URL_ALIASES, "url")
    uid_c = force_uid or _pick(cols, cfg.uid_col, UID_ALIASES, "uid")
    key_c = _pick([c for c in cols if c not in (uid_c, text_c, url_c)], None, KEY_ALIASES, "key")
    width_c = _pick(cols, None, WIDTH_ALIASES, "width")
    height_c = _pick(cols, None, HEIGHT_ALIASES, "height")
    used = {text_c, url_c, uid_c, key_c, width_c, height_c}
    scores = [
        c for c in cols
        if c not in used and SCORE_PATTERN.search(c)
        and isinstance(df.schema[c].dataType, T.NumericType)
    ]

    def text_of(c: str | None):
        return F.col(f"`{c}`").cast("string") if c else F.lit(None).cast("string")

    select = [
        text_of(uid_c).alias("_uid_given"),
        text_of(url_c).alias("url"),
        text_of(text_c).alias("text"),
        (F.col("image_ref") if "image_ref" in cols else F.lit(None).cast("string")).alias("image_ref"),
        (F.col(CORRUPT) if CORRUPT in df.columns else F.lit(None).cast("string")).alias("_malformed"),
    ]
    extras = ["image_ref"]
    if key_c:
        select.append(text_of(key_c).alias("source_key"))
        extras.append("source_key")
    if width_c:
        select.append(F.col(f"`{width_c}`").cast("int").alias("width"))
        extras.append("width")
    if height_c:
        select.append(F.col(f"`{height_c}`").cast("int").alias("height"))
        extras.append("height")
    if "license" in cols:
        select.append(F.col("license").cast("string").alias("license"))
        extras.append("license")
    for c in scores:
        select.append(F.col(f"`{c}`").cast("double").alias(c))
        extras.append(c)
    log.info("ingest %s: text=%s url=%s uid=%s", fmt, text_c, url_c, uid_c or "(hash of url+text)")
    return RawPool(df.select(*select), fmt, uid_c, tuple(extras))


def _read_delimited(spark: SparkSession, path: str, cfg: IngestConfig, sep: str, fmt: str) -> RawPool:
    first = spark.read.text(path).limit(1).collect()
    if not first:
        raise InputError(f"input is empty: {path}")
    line = first[0][0]
    fields = next(csv.reader(io.StringIO(line), delimiter=sep)) if fmt == "csv" else line.split(sep)
    explicit = cfg.text_col or cfg.url_col or cfg.uid_col
    looks_like_data = any(f.strip().lower().startswith(("http://", "https://")) for f in fields)
    header = bool(explicit) or not looks_like_data
    if header:
        names = [f.strip() or f"_c{i}" for i, f in enumerate(fields)]
    else:
        # CC3M style: no header; the field holding http(s) is the URL, the other the caption.
        url_i = next(i for i, f in enumerate(fields) if f.strip().lower().startswith(("http://", "https://")))
        names = [f"_c{i}" for i in range(len(fields))]
        names[url_i] = "url"
        others = [i for i in range(len(fields)) if i != url_i]
        if not others:
            raise InputError(f"{path}: rows hold only a URL; no caption column")
        names[others[0]] = "caption"
    schema = T.StructType([T.StructField(n, T.StringType()) for n in names] + [T.StructField(CORRUPT, T.StringType())])
    reader = (
        spark.read.schema(schema)
        .option("sep", sep)
        .option("header", str(header).lower())
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT)
        .option("multiLine", "false")
        .option("encoding", "UTF-8")
    )
    if fmt == "tsv":
        reader = reader.option("quote", "")  # TSV captions carry bare quotes; no quoting.
    df = reader.csv(path)
    return _normalise(df, cfg, fmt)


def _read_coco(spark: SparkSession, path: str, cfg: IngestConfig) -> RawPool:
    rows = []
    for file in _list_files(path):
        with open(file, encoding="utf-8") as fh:
            try:
                doc = json.load(fh)
            except json.JSONDecodeError as exc:
                raise InputError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(doc, dict) or "annotations" not in doc:
            raise InputError(f"{file}: not a COCO captions file (no 'annotations' list)")
        images = {im.get("id"): im for im in doc.get("images", []) if isinstance(im, dict)}
        for ann in doc["annotations"]:
            im = images.get(ann.get("image_id"), {}) if isinstance(ann, dict) else {}
            ok = isinstance(ann, dict)
            rows.append(
                (
                    im.get("coco_url") or im.get("flickr_url"),
                    ann.get("caption") if ok else None,
                    im.get("file_name"),
                    str(ann.get("id")) if ok else None,
                    im.get("width"),
                    im.get("height"),
                    str(im["license"]) if im.get("license") is not None else None,
                    None if ok else json.dumps(ann)[:1000],
                )
            )
    schema = "url string, caption string, image_ref string, key string, width int, height int, license string, _corrupt_record string"
    df = spark.createDataFrame(rows, schema=schema)
    return _normalise(df, cfg, "coco")


def _read_flickr(spark: SparkSession, path: str, cfg: IngestConfig) -> RawPool:
    # Flickr8k.token.txt: "<image>.jpg#<k><TAB><caption>", a few lines with a space instead of the tab.
    lines = spark.read.text(path)
    pattern = r"^(\S+?)#(\d+)[\t ](.*)$"
    parsed = lines.select(
        F.regexp_extract("value", pattern, 1).alias("image"),
        F.regexp_extract("value", pattern, 2).alias("k"),
        F.regexp_extract("value", pattern, 3).alias("caption"),
        F.col("value"),
    ).where(F.length("value") > 0)
    ok = F.col("value").rlike(pattern)
    df = parsed.select(
        F.lit(None).cast("string").alias("url"),
        F.when(ok, F.col("caption")).alias("caption"),
        F.when(ok, F.col("image")).alias("image_ref"),
        F.when(ok, F.concat_ws("#", "image", "k")).alias("key"),
        F.when(~ok, F.col("value")).alias(CORRUPT),
    )
    return _normalise(df, cfg, "flickr")


def _read_webdataset(spark: SparkSession, path: str, cfg: IngestConfig) -> RawPool:
    tars = [f for f in _list_files(path) if f.endswith(".tar")]
    if not tars:
        raise InputError(f"no .tar files under {path}")
    schema = T.StructType(
        [
            T.StructField("url", T.StringType()),
            T.StructField("caption", T.StringType()),
            T.StructField("image_ref", T.StringType()),
            T.StructField("key", T.StringType()),
            T.StructField("width", T.IntegerType()),
            T.StructField("height", T.IntegerType()),
            T.StructField(CORRUPT, T.StringType()),
        ]
    )
    rdd = spark.sparkContext.parallelize(tars, max(1, len(tars))).flatMap(read_tar_samples)
    df = spark.createDataFrame(rdd, schema=schema)
    return _normalise(df, cfg, "webdataset")


def read_tar_samples(tar_path: str):
    """Yield one tuple per sample key of a WebDataset tar (runs on executors)."""
    import tarfile

    samples: dict[str, dict] = {}
    order: list[str] = []
    try:
        with tarfile.open(tar_path, mode="r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name
                base = os.path.basename(name)
                key, dot, ext = base.partition(".")
                if not dot:
                    continue
                full_key = os.path.join(os.path.dirname(name), key)
                if full_key not in samples:
                    samples[full_key] = {}
                    order.append(full_key)
                entry = samples[full_key]
                ext = "." + ext.lower()
                if ext in IMAGE_SUFFIXES:
                    entry["image"] = name
                elif ext in (".txt", ".json"):
                    fh = tar.extractfile(member)
                    entry[ext] = fh.read() if fh else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield (None, None, None, None, None, None, f"unreadable tar {tar_path}: {exc}")
        return
    for key in order:
        entry = samples[key]
        meta: dict = {}
        bad = None
        if ".json" in entry:
            try:
                meta = json.loads(entry[".json"].decode("utf-8", errors="replace"))
                if not isinstance(meta, dict):
                    meta, bad = {}, f"{key}.json is not an object"
            except json.JSONDecodeError as exc:
                bad = f"{key}.json: {exc.msg}"
        text = None
        if ".txt" in entry:
            # Invalid UTF-8 becomes U+FFFD and is dropped later as undecodable_text.
            text = entry[".txt"].decode("utf-8", errors="replace")
        elif isinstance(meta.get("caption") or meta.get("text"), str):
            text = meta.get("caption") or meta.get("text")
        image = f"{tar_path}::{entry['image']}" if "image" in entry else None

        def as_int(v):
            return v if isinstance(v, int) and not isinstance(v, bool) else None

        yield (
            meta.get("url") if isinstance(meta.get("url"), str) else None,
            text,
            image,
            f"{os.path.basename(tar_path)}/{key}",
            as_int(meta.get("width")),
            as_int(meta.get("height")),
            bad,
        )


def _read_mmc4(spark: SparkSession, path: str, cfg: IngestConfig) -> RawPool:
    """MMC4 documents: each image of a document paired with the sentence it was matched to."""
    docs = spark.read.option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT).json(path)
    missing = [c for c in ("url", "text_list", "image_info") if c not in docs.columns]
    if missing:
        raise InputError(f"{path}: not MMC4 documents (no {', '.join(missing)}); columns present: {', '.join(docs.columns)}")
    corrupt = F.col(CORRUPT) if CORRUPT in docs.columns else F.lit(None).cast("string")
    images = docs.select(
        F.col("url").alias("doc_url"), "text_list", corrupt.alias(CORRUPT),
        F.explode_outer("image_info").alias("img"),
    )
    sentence = F.col("img.matched_text_index")
    df = images.select(
        F.col("img.raw_url").alias("url"),
        F.when(sentence.isNotNull(), F.get(F.col("text_list"), sentence.cast("int"))).alias("caption"),
        F.concat_ws("#", "doc_url", F.col("img.image_name")).alias("key"),
        F.col("img.matched_sim").cast("double").alias("matched_sim"),
        F.when(F.col("img").isNull() & F.col(CORRUPT).isNull(), F.concat(F.lit("document without images: "), F.col("doc_url")))
        .otherwise(F.col(CORRUPT)).alias(CORRUPT),
    )
    return _normalise(df, cfg, "mmc4")


def read_pool(spark: SparkSession, path: str, cfg: IngestConfig) -> RawPool:
    """Read `path` in `cfg.format` (or the detected one) as a raw pool frame."""
    local = _local(path)
    if local is not None and not os.path.exists(local):
        raise InputError(f"input not found: {path}")
    fmt = cfg.format if cfg.format != "auto" else detect_format(path)
    if fmt in ("parquet", "datacomp"):
        try:
            df = spark.read.parquet(path)
        except Exception as exc:  # AnalysisException: empty folder, unreadable footer
            raise InputError(f"cannot read Parquet at {path}: {str(exc).splitlines()[0]}") from None
        return _normalise(df, cfg, fmt, force_uid="uid" if fmt == "datacomp" and not cfg.uid_col else None)
    if fmt == "tsv":
        return _read_delimited(spark, path, cfg, "\t", fmt)
    if fmt == "csv":
        return _read_delimited(spark, path, cfg, ",", fmt)
    if fmt == "jsonl":
        return _normalise(_read_json_lines(spark, path), cfg, fmt)
    if fmt == "coco":
        return _read_coco(spark, path, cfg)
    if fmt == "flickr":
        return _read_flickr(spark, path, cfg)
    if fmt == "webdataset":
        return _read_webdataset(spark, path, cfg)
    if fmt == "mmc4":
        return _read_mmc4(spark, path, cfg)
    raise InputError(f"unknown format {fmt!r}")


# A \uD800-\uDBFF escape not followed by a \uDC00-\uDFFF one, or a low one without a high one
# before it. JSON allows the escape, but the string is not Unicode: Java's parser would
# silently turn it into "?", so such lines are told apart from the raw text first.
LONE_SURROGATE = (
    r"(?<!\\)(?:\\\\)*\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})(?<!\\)(?:\\\\)*\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _read_json_lines(spark, path: str) -> DataFrame:
    """One JSON object per line; unparsable lines and lines with lone surrogate escapes are malformed."""
    inferred = spark.read.option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT).json(path)
    fields = [f for f in inferred.schema.fields if f.name != CORRUPT]
    if not fields:
        raise InputError(f"{path}: no JSON object lines found")
    schema = T.StructType([*fields, T.StructField(CORRUPT, T.StringType())])
    lines = spark.read.text(path).where(F.trim("value") != "")
    parsed = lines.select(
        "value",
        F.from_json("value", schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}).alias("j"),
    )
    lone = F.col("value").rlike(LONE_SURROGATE)
    corrupt = (
        F.when(lone, F.concat(F.lit("lone UTF-16 surrogate escape in: "), F.col("value")))
        .when(F.col(f"j.{CORRUPT}").isNotNull() | F.col("j").isNull(), F.col("value"))
    )
    return parsed.select(*[F.col(f"j.{f.name}").alias(f.name) for f in fields], corrupt.alias(CORRUPT))
