"""Readers for the pool formats people have, each returning one raw frame for the ingest stage.

A raw frame has `url`, `text`, `image_ref`, `_uid_given` (the user's uid or null),
`_malformed` (the raw record when the row could not be parsed, else null),
`_text_invalid_utf8` (the caption's bytes were not valid UTF-8) and any extra columns worth
keeping (width, height, scores, source_key, license, face_bboxes).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.core.errors import UserError
from pipeline.kernels.imageshards import IMAGE_EXTS

# The ingest stage's config (pipeline.stages.ingest.IngestConfig), read by field: the ingest
# stage imports this module, not the other way round.
IngestConfig = Any

log = logging.getLogger(__name__)

TEXT_ALIASES = ("text", "caption", "alt_text", "alt+text", "alt", "title", "description", "sentence")
URL_ALIASES = ("url", "image_url", "img_url", "image_link", "link")
UID_ALIASES = ("uid",)
KEY_ALIASES = ("key", "id", "sample_id", "__index_level_0__")
WIDTH_ALIASES = ("width", "original_width", "image_width")
HEIGHT_ALIASES = ("height", "original_height", "image_height")
LANG_ALIASES = ("language", "lang")
IMAGE_HASH_ALIASES = ("sha256", "image_sha256", "image_hash")
SCORE_PATTERN = re.compile(r"(similarity|score|_sim$)", re.IGNORECASE)
IMAGE_SUFFIXES = tuple(f".{ext}" for ext in IMAGE_EXTS)
CORRUPT = "_corrupt_record"
# A reader that decodes bytes itself lists here the columns whose bytes were not valid UTF-8;
# their values hold those bytes decoded with U+FFFD. A U+FFFD cannot say this by itself: a
# valid caption may hold one (mojibake is common in LAION).
INVALID_UTF8 = "_invalid_utf8"
# One character per byte: text decoded with it encodes back to the very bytes read.
LATIN1 = "ISO-8859-1"
# A well-formed UTF-8 sequence of two to four bytes (Unicode 15, table 3-7), over text decoded as
# ISO-8859-1; the alternative after it is any other byte >= 0x80, i.e. an invalid one.
VALID_UTF8_MULTIBYTE = (
    r"[\xC2-\xDF][\x80-\xBF]|\xE0[\xA0-\xBF][\x80-\xBF]|[\xE1-\xEC\xEE\xEF][\x80-\xBF]{2}"
    r"|\xED[\x80-\x9F][\x80-\xBF]|\xF0[\x90-\xBF][\x80-\xBF]{2}|[\xF1-\xF3][\x80-\xBF]{3}"
    r"|\xF4[\x80-\x8F][\x80-\xBF]{2}"
)
EXTRA_COLUMNS = ("width", "height", "image_ref", "source_key", "license", "face_bboxes")
# DataComp's face boxes: per sample a list of [x1, y1, x2, y2], fractions of the image's width
# and height; the download stage hands them to img2dataset's blurring (download.blur_faces).
FACE_BBOXES = "face_bboxes"


class InputError(UserError):
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
    cols = [c for c in df.columns if c not in (CORRUPT, INVALID_UTF8)]
    text_c = _pick(cols, cfg.text_col, TEXT_ALIASES, "text")
    if text_c is None:
        raise InputError(
            f"no text column found (looked for {', '.join(TEXT_ALIASES)}); columns present: {', '.join(cols)}; pass --text-col"
        )
    url_c = _pick(cols, cfg.url_col, URL_ALIASES, "url")
    uid_c = force_uid or _pick(cols, cfg.uid_col, UID_ALIASES, "uid")
    key_c = _pick([c for c in cols if c not in (uid_c, text_c, url_c)], None, KEY_ALIASES, "key")
    lang_c = _pick([c for c in cols if c not in (uid_c, text_c, url_c, key_c)], cfg.lang_col, LANG_ALIASES, "language")
    hash_c = (
        _pick(cols, cfg.image_hash_col, IMAGE_HASH_ALIASES, "image hash")
        if cfg.group_alt_texts == "image_hash" else None
    )
    if cfg.group_alt_texts == "image_hash" and hash_c is None:
        raise InputError(
            f"ingest.group_alt_texts=image_hash needs an image hash column (looked for {', '.join(IMAGE_HASH_ALIASES)}); "
            f"columns present: {', '.join(cols)}; pass --image-hash-col"
        )
    width_c = _pick(cols, None, WIDTH_ALIASES, "width")
    height_c = _pick(cols, None, HEIGHT_ALIASES, "height")
    used = {text_c, url_c, uid_c, key_c, width_c, height_c, lang_c, hash_c}
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
        (
            F.coalesce(F.array_contains(F.col(INVALID_UTF8), text_c), F.lit(False))
            if INVALID_UTF8 in df.columns
            else F.lit(False)  # Parquet: the text column holds the file's bytes; ingest checks them
        ).alias("_text_invalid_utf8"),
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
    if lang_c:
        select.append(text_of(lang_c).alias("language"))
        extras.append("language")
    if hash_c:
        select.append(text_of(hash_c).alias("_image_hash"))
    if "license" in cols:
        select.append(F.col("license").cast("string").alias("license"))
        extras.append("license")
    if FACE_BBOXES in cols:
        boxes = _face_bboxes(df, FACE_BBOXES)
        if boxes is not None:
            select.append(boxes.alias(FACE_BBOXES))
            extras.append(FACE_BBOXES)
    for c in scores:
        select.append(F.col(f"`{c}`").cast("double").alias(c))
        extras.append(c)
    log.info("ingest %s: text=%s url=%s uid=%s", fmt, text_c, url_c, uid_c or "(hash of url+text)")
    return RawPool(df.select(*select), fmt, uid_c, tuple(extras))


def _face_bboxes(df: DataFrame, name: str) -> Column | None:
    """The boxes as array<array<double>> when the column is a list of numeric lists, else None (warned)."""
    kind = df.schema[name].dataType
    if (
        isinstance(kind, T.ArrayType)
        and isinstance(kind.elementType, T.ArrayType)
        and isinstance(kind.elementType.elementType, T.NumericType)
    ):
        return F.col(f"`{name}`").cast("array<array<double>>")
    log.warning("ingest: column %s is %s, not a list of [x1, y1, x2, y2] lists; not kept", name, kind.simpleString())
    return None


def _latin1_bytes(c: Column) -> Column:
    """The bytes a column read as ISO-8859-1 was decoded from, as a string (valid UTF-8 or not)."""
    return F.encode(c, LATIN1).cast("string")


def _invalid_utf8_columns(raw: dict[str, Column]) -> Column:
    """The names of the columns in `raw` (name -> undecoded bytes) that are not valid UTF-8."""
    return F.array_compact(F.array(*[F.when(~F.is_valid_utf8(c), F.lit(name)) for name, c in raw.items()]))


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
        # Spark would decode UTF-8 with U+FFFD for invalid bytes, losing that they were invalid.
        # ISO-8859-1 maps each byte to one character and the separators are ASCII, so fields come
        # out as their bytes and are decoded here.
        .option("encoding", LATIN1)
    )
    if fmt == "tsv":
        reader = reader.option("quote", "")  # TSV captions carry bare quotes; no quoting.
    df = reader.csv(path)
    raw = {n: _latin1_bytes(F.col(f"`{n}`")) for n in names}
    df = df.select(
        *[F.make_valid_utf8(c).alias(n) for n, c in raw.items()],
        F.make_valid_utf8(_latin1_bytes(F.col(CORRUPT))).alias(CORRUPT),
        _invalid_utf8_columns(raw).alias(INVALID_UTF8),
    )
    return _normalise(df, cfg, fmt)


def load_json_bytes(data: bytes):
    """(document, the same document without its invalid UTF-8 bytes or None when there are none).

    The document has invalid bytes decoded as U+FFFD. Outside a string a U+FFFD fails the
    parse, so both documents have the same shape, and a string that differs between them held
    invalid bytes; a string that is equal did not, U+FFFD or not.
    """
    try:
        return json.loads(data.decode("utf-8")), None
    except UnicodeDecodeError:
        pass
    doc = json.loads(data.decode("utf-8", errors="replace"))
    return doc, json.loads(data.decode("utf-8", errors="ignore"))


def _caption_of(meta) -> str | None:
    text = (meta.get("caption") or meta.get("text")) if isinstance(meta, dict) else None
    return text if isinstance(text, str) else None


def _read_coco(spark: SparkSession, path: str, cfg: IngestConfig) -> RawPool:
    rows = []
    for file in _list_files(path):
        with open(file, "rb") as fh:
            data = fh.read()
        try:
            doc, stripped = load_json_bytes(data)
        except json.JSONDecodeError as exc:
            raise InputError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(doc, dict) or "annotations" not in doc:
            raise InputError(f"{file}: not a COCO captions file (no 'annotations' list)")
        images = {im.get("id"): im for im in doc.get("images", []) if isinstance(im, dict)}
        stripped_anns = stripped.get("annotations") if isinstance(stripped, dict) else None
        for i, ann in enumerate(doc["annotations"]):
            im = images.get(ann.get("image_id"), {}) if isinstance(ann, dict) else {}
            ok = isinstance(ann, dict)
            caption = ann.get("caption") if ok else None
            invalid = None
            if ok and stripped is not None:
                other = stripped_anns[i] if isinstance(stripped_anns, list) and i < len(stripped_anns) else None
                if caption != (other.get("caption") if isinstance(other, dict) else None):
                    invalid = ["caption"]
            rows.append(
                (
                    im.get("coco_url") or im.get("flickr_url"),
                    caption,
                    im.get("file_name"),
                    str(ann.get("id")) if ok else None,
                    im.get("width"),
                    im.get("height"),
                    str(im["license"]) if im.get("license") is not None else None,
                    None if ok else json.dumps(ann)[:1000],
                    invalid,
                )
            )
    schema = (
        "url string, caption string, image_ref string, key string, width int, height int, license string, "
        f"{CORRUPT} string, {INVALID_UTF8} array<string>"
    )
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
    # The caption again, from the line's bytes: regexp_extract decodes invalid UTF-8 as U+FFFD.
    # (?s): a byte 0x85 inside a UTF-8 character reads as NEL, which "." would not match.
    raw_caption = _latin1_bytes(
        F.regexp_extract(F.decode(F.col("value").cast("binary"), LATIN1), r"(?s)^\S+?#\d+[\t ](.*)$", 1)
    )
    df = parsed.select(
        F.lit(None).cast("string").alias("url"),
        F.when(ok, F.col("caption")).alias("caption"),
        F.when(ok, F.col("image")).alias("image_ref"),
        F.when(ok, F.concat_ws("#", "image", "k")).alias("key"),
        F.when(~ok, F.col("value")).alias(CORRUPT),
        F.when(ok & ~F.is_valid_utf8(raw_caption), F.array(F.lit("caption"))).alias(INVALID_UTF8),
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
            T.StructField(INVALID_UTF8, T.ArrayType(T.StringType())),
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
        yield (None, None, None, None, None, None, f"unreadable tar {tar_path}: {exc}", None)
        return
    for key in order:
        entry = samples[key]
        meta: dict = {}
        stripped = None
        bad = None
        if ".json" in entry:
            try:
                meta, stripped = load_json_bytes(entry[".json"])
                if not isinstance(meta, dict):
                    meta, bad = {}, f"{key}.json is not an object"
            except json.JSONDecodeError as exc:
                bad = f"{key}.json: {exc.msg}"
        text = None
        invalid = False
        if ".txt" in entry:
            try:
                text = entry[".txt"].decode("utf-8")
            except UnicodeDecodeError:
                # Kept readable for the ledger; ingest drops it as undecodable_text.
                text, invalid = entry[".txt"].decode("utf-8", errors="replace"), True
        else:
            text = _caption_of(meta)
            invalid = stripped is not None and text != _caption_of(stripped)
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
            ["caption"] if invalid else None,
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
    # from_json decodes invalid UTF-8 as U+FFFD. A line with invalid bytes is parsed again without
    # them (as in load_json_bytes): a string field that differs between the parses held some.
    valid = F.is_valid_utf8("value")
    without_invalid = _latin1_bytes(
        F.regexp_replace(F.decode(F.col("value").cast("binary"), LATIN1), f"({VALID_UTF8_MULTIBYTE})|[\\x80-\\xFF]", "$1")
    )
    stripped = F.when(~valid, F.from_json(without_invalid, schema, {"mode": "PERMISSIVE"}))
    texts = [f.name for f in fields if isinstance(f.dataType, T.StringType)]
    invalid = F.when(
        ~valid,
        F.array_compact(F.array(*[F.when(~F.col("j")[n].eqNullSafe(stripped[n]), F.lit(n)) for n in texts])),
    )
    return parsed.select(
        *[F.col(f"j.{f.name}").alias(f.name) for f in fields],
        corrupt.alias(CORRUPT),
        (invalid if texts else F.lit(None).cast("array<string>")).alias(INVALID_UTF8),
    )
