"""Export stage: the final kept rows handed over for training, under `<run>/export/`.

- `data/`: the curated subset as Parquet (uid, url, text, sizes, language, concept entry ids,
  cluster id, scores: whatever the run's stages made), one ledger row per uid (all kept);
- `uids.npy`: DataComp's uid list (sorted `u8,u8` pairs of the 32-hex-digit uids), or `uids.txt`
  when the uids are not 32 hex digits;
- `shards/NNNNN.tar`: WebDataset shards of the kept samples (`<key>.jpg`, `<key>.txt`,
  `<key>.json`), image bytes from the download stage's shards, written by Spark tasks in place,
  with `shards/sizes.json` (samples per shard, as open_clip's loader reads it) and `shards/__len__`
  (the total, open_clip's other convention).

Samples are ordered by (download shard, key, uid), so each task reads its images from few
download shards in sequence, and the same run writes byte-identical tars.

A worldwide run (per-language metadata: `match/languages.json`) or one whose images carry
several alt-texts (`image_uid`) also gets `worldwide/`, so a training loader can redo MetaCLIP 2's
per-epoch choice (one text per image) and sampling (keep with 1 - prod(1 - p_i)) online:

- `worldwide/entry_probs.parquet` (one file): language, entry_id, entry, count, t, prob for every
  entry of every language, prob = 1 when count < t (or the language has no t), else t / count;
- `worldwide/texts.parquet` (a folder of Parquet parts): every matched text of every exported
  image, with its language, metadata language, global entry ids and whether it is the text this
  run exported. docs/worldwide_formats.md describes both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.config import ConfigError
from pipeline.core.errors import UserError
from pipeline.core.protocol import Context, Input, Output, Plan, Stage

log = logging.getLogger(__name__)

# Columns a user wants in the subset, and the run's stages that can give each (the first
# complete one that has it). Embeddings stay in embed/data: they are not copied again.
WANTED = (
    ("url", ("download", "ingest")),
    ("text", ("download", "ingest")),
    ("original_width", ("download",)),
    ("original_height", ("download",)),
    ("sha256", ("download",)),
    ("language", ("filter",)),
    ("language_confidence", ("filter",)),
    ("clip_score", ("filter",)),
    ("entry_ids", ("balance", "match")),
    ("keep_prob", ("balance",)),
    ("cluster_id", ("cluster",)),
)
KEY_DIGITS = 5  # sample position digits in an exported key: shard 00012, sample 00345 -> 0001200345
WORLDWIDE = "worldwide"
ENTRY_PROBS = f"{WORLDWIDE}/entry_probs.parquet"
TEXTS = f"{WORLDWIDE}/texts.parquet"


class ExportError(UserError):
    """The export cannot be made as asked (no images, or a complete export in the way)."""


@dataclass(frozen=True)
class ExportConfig:
    # Samples per WebDataset shard (the last one holds the rest).
    samples_per_shard: int = 10000
    # Write WebDataset shards (needs the download stage); off: the Parquet subset and uid list only.
    shards: bool = True

    def validate(self, where: str) -> None:
        if not 1 <= self.samples_per_shard < 10**KEY_DIGITS:
            raise ConfigError(f"{where}.samples_per_shard: must be in [1, {10**KEY_DIGITS - 1}], got {self.samples_per_shard}")


def plan(ctx: Context) -> Plan:
    """An export replaces a complete one of other inputs only when forced: training may read it."""
    from pipeline.core.protocol import fingerprint

    cfg: ExportConfig = ctx.cfg
    images = ctx.input("images")
    if cfg.shards and images.stage != "download":
        raise ExportError(
            f"export: {images.given} holds no complete download stage to take image bytes from; "
            "run download first, or pass --no-shards for the Parquet subset and uid list only"
        )
    worldwide = worldwide_inputs(ctx)
    fp: dict[str, Any] = {"columns": _sources(ctx)}
    if worldwide is not None:
        # Only then: an export of a single-list run keeps its fingerprint (no --force needed after an upgrade).
        ctx.state["worldwide"] = worldwide
        fp["worldwide"] = {s: ctx.run.marker(s) for s in ("match", "count", "balance") if ctx.run.is_complete(s)}
    plan = Plan(fingerprint=fp)
    marker = ctx.run.marker(ctx.stage.dir_name)
    if marker is not None and not ctx.force and marker.get("fingerprint") != fingerprint(ctx, plan):
        raise ExportError(
            f"export: {ctx.dir} holds a complete export of other inputs or settings; pass --force to replace it "
            "(`curate run --from export`) - a training job may be reading its shards"
        )
    return plan


def _sources(ctx: Context) -> dict[str, Any]:
    """For each wanted column not in the input: the complete stage of this run it comes from, and its marker."""
    out: dict[str, Any] = {}
    for _, stages in WANTED:
        for s in stages:
            if s not in out and ctx.run.is_complete(s):
                out[s] = ctx.run.marker(s)
    return out


def run(ctx: Context) -> Output:
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from pipeline.core.contracts import require_columns

    cfg: ExportConfig = ctx.cfg
    spark, run = ctx.spark, ctx.run
    source = ctx.input().path
    base = spark.read.parquet(source)
    require_columns(base, ("uid",), "export")
    flat = [f.name for f in base.schema.fields if not (isinstance(f.dataType, T.ArrayType) and f.name.endswith("embedding"))]
    rows = base.select(*flat)
    taken = {}
    for col, stages in WANTED:
        if col in rows.columns:
            continue
        for s in stages:
            if run.is_complete(s) and col in spark.read.parquet(run.data_dir(s)).columns:
                taken.setdefault(s, []).append(col)
                break
    for s, cols in taken.items():
        rows = rows.join(spark.read.parquet(run.data_dir(s)).select("uid", *cols), on="uid", how="left")
    front = [c for c in ("uid", "url", "text") if c in rows.columns]
    rows = rows.select(*front, *[c for c in rows.columns if c not in front])
    stats: dict[str, Any] = {"input": source, "columns_from": {s: cols for s, cols in taken.items()}}

    files: dict[str, Any] = {}
    pairs, not_hex = uid_list(rows)
    if pairs is not None:
        import io

        import numpy as np

        buf = io.BytesIO()
        np.save(buf, pairs, allow_pickle=False)
        files["uids.npy"] = buf.getvalue()
        stats["uid_list"] = "uids.npy"
    else:
        uids = [r.uid for r in rows.select("uid").orderBy("uid").collect()]
        files["uids.txt"] = "".join(u + "\n" for u in uids).encode("utf-8")
        stats["uid_list"] = "uids.txt"
        stats["uid_list_reason"] = f"{not_hex} uids are not 32 hex digits (e.g. {uids[0]!r}): no DataComp u8,u8 list"
    if cfg.shards:
        stats["shards"] = write_shards(ctx, rows, cfg.samples_per_shard)
        files["shards/sizes.json"] = stats["shards"].pop("sizes")
        # open_clip reads the total from `__len__` when no sizes.json lists the shards it is given.
        files["shards/__len__"] = f"{stats['shards']['total']}\n".encode()
    tables: dict[str, Any] = {}
    if ctx.state.get("worldwide") is not None:
        stats[WORLDWIDE] = worldwide_outputs(ctx, rows, ctx.state["worldwide"], files, tables)
    decided = rows.withColumn("_reason", F.lit(None).cast("string")).withColumn("_detail", F.lit(None).cast("string"))
    return Output(decided=decided, files=files, tables=tables, stats=stats)


# --------------------------------------------------------------------------- worldwide side files


def worldwide_inputs(ctx: Context) -> dict[str, Any] | None:
    """What `worldwide/` is made from; None for a run with one metadata list and no alt-text groups.

    Texts come from the run's match output; entry probabilities need the balance stage's t
    (per language in a worldwide run) and the counts it used. Without a complete balance stage
    only the texts are written, and stats.json says why.
    """
    run, fs = ctx.run, ctx.run.fs
    if not run.is_complete("match"):
        return None
    languages_file = f"{run.stage_dir('match')}/languages.json"
    per_language = fs.exists(languages_file)
    grouped = "image_uid" in ctx.spark.read.parquet(run.data_dir("match")).columns
    if not (per_language or grouped):
        return None
    out: dict[str, Any] = {"per_language": per_language, "grouped": grouped, "thresholds": None}
    if not run.is_complete("balance"):
        out["entry_probs_missing"] = "no complete balance stage in the run: no t to give the entries"
        return out
    bal = run.stats("balance")
    spans = fs.read_json(languages_file) if per_language else None
    if per_language:
        by_lang = bal.get("t_by_language")
        if not isinstance(by_lang, Mapping):
            raise ExportError(
                f"export: {run.stage_dir('balance')}/stats.json has no t_by_language, but {languages_file} says the run is "
                "worldwide; rerun balance (`curate run --from balance`)"
            )
        missing = [r["language"] for r in spans if r["language"] not in by_lang]
        if missing:
            raise ExportError(f"export: balance's t_by_language has no t for {', '.join(missing)}; rerun balance")
        thresholds: dict[str, Any] = {"t_by_language": dict(by_lang)}
    else:
        thresholds = {"t": bal["t"]}
    counts = bal.get("counts") or run.data_dir("count")
    if not fs.exists(counts):
        raise ExportError(f"export: the counts balance used ({counts}) are gone; rerun count and balance")
    out["thresholds"] = {**thresholds, "spans": spans, "counts": counts}
    return out


def entry_probabilities(
    entries: Sequence[str],
    counts: np.ndarray,
    spans: Sequence[Mapping[str, Any]] | None,
    t: float | None = None,
    t_by_language: Mapping[str, float | None] | None = None,
):
    """language, entry_id, entry, count, t, prob per global entry id, as a pyarrow Table.

    prob = 1 when count < t, else t / count (MetaCLIP's p_i, with t of the entry's language,
    `spans` being match/languages.json); an entry of a language without t (no match at all)
    gets 1, as balance gives it. With one list (`spans` None) every entry has `t` and no language.
    """
    import pyarrow as pa

    n = len(entries)
    counts = np.asarray(counts, np.int64)
    if len(counts) != n:
        raise ValueError(f"{len(counts)} counts for {n} entries")
    language = np.full(n, None, dtype=object)
    tt = np.full(n, np.nan)
    if spans is None:
        tt[:] = np.nan if t is None else float(t)
    else:
        for rec in spans:
            first, size = int(rec["first"]), int(rec["entries"])
            language[first:first + size] = rec["language"]
            value = (t_by_language or {}).get(rec["language"])
            tt[first:first + size] = np.nan if value is None else float(value)
        if any(lang is None for lang in language):
            raise ValueError("match/languages.json does not cover every entry id")
    head = ~np.isnan(tt) & (counts >= tt)
    prob = np.ones(n)
    prob[head] = tt[head] / counts[head]
    return pa.table({
        "language": pa.array(language.tolist(), pa.string()),
        "entry_id": pa.array(np.arange(n), pa.int32()),
        "entry": pa.array(list(entries), pa.string()),
        "count": pa.array(counts, pa.int64()),
        "t": pa.array([None if np.isnan(v) else float(v) for v in tt], pa.float64()),
        "prob": pa.array(prob, pa.float64()),
    })


def worldwide_outputs(ctx: Context, rows, inputs: Mapping[str, Any], files: dict[str, Any], tables: dict[str, Any]) -> dict[str, Any]:
    """Add `worldwide/entry_probs.parquet` (to `files`) and `worldwide/texts.parquet` (to `tables`); returns their stats.

    Needs: uid in `rows`. The texts of an exported image are all its rows in match/data (joined
    on image_uid through the exported uid, so `rows` need not carry image_uid); `chosen` marks
    the text this run exported for it (balance's choice when the export follows balance).
    """
    from pyspark.sql import functions as F

    run, spark = ctx.run, ctx.spark
    match = spark.read.parquet(run.data_dir("match"))
    exported = rows.select("uid").distinct()
    if inputs["grouped"]:
        images = match.join(exported, on="uid", how="left_semi").select("image_uid").distinct()
        texts = match.join(images, on="image_uid", how="left_semi")
        key = ["image_uid"]
    else:
        texts = match.join(exported, on="uid", how="left_semi")
        key = []
    texts = texts.join(exported.withColumn("chosen", F.lit(True)), on="uid", how="left")
    # A run with one list has no language columns; the format keeps them, null.
    lang = [F.col(c) if c in texts.columns else F.lit(None).cast("string").alias(c) for c in ("language", "metadata_language")]
    texts = texts.select(
        *key, "uid", "text", *lang, "entry_ids", F.coalesce("chosen", F.lit(False)).alias("chosen")
    ).orderBy(*key, "uid")
    n_texts, n_images = texts.agg(F.count(F.lit(1)), F.countDistinct(*(key or ["uid"]))).first()
    out: dict[str, Any] = {
        "files": {"texts": TEXTS}, "rows": {"texts": int(n_texts)}, "images": int(n_images), "joined_on": (key or ["uid"])[0],
    }
    tables[TEXTS] = texts

    th = inputs["thresholds"]
    if th is None:
        out["entry_probs_missing"] = inputs["entry_probs_missing"]
    else:
        import io

        import pyarrow.parquet as pq

        rows_c = spark.read.parquet(th["counts"]).select("entry_id", "entry", "count").orderBy("entry_id").toPandas()
        entries = [str(e) for e in run.fs.read_json(f"{run.stage_dir('match')}/metadata.json")]
        if rows_c["entry_id"].tolist() != list(range(len(entries))):
            raise ExportError(f"export: {th['counts']} does not hold one count per entry of match/metadata.json; rerun count")
        table = entry_probabilities(
            entries, rows_c["count"].to_numpy(), th["spans"], th.get("t"), th.get("t_by_language")
        )
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        files[ENTRY_PROBS] = buf.getvalue()
        out["files"]["entry_probs"] = ENTRY_PROBS
        out["rows"]["entry_probs"] = table.num_rows
    log.info("export: %d texts of %d exported images -> %s/%s", n_texts, n_images, ctx.dir, WORLDWIDE)
    return out


def uid_list(rows):
    """DataComp's sorted `u8,u8` uid pairs, made on the executors; (None, how many uids are not 32 hex digits) otherwise."""
    import numpy as np
    import pyarrow as pa
    from pyspark.sql import types as T

    from pipeline.kernels.datacomp import HEX32

    def halves(batches):
        for batch in batches:
            hi, lo, bad = [], [], 0
            for uid in batch.column(0).to_pylist():
                if uid is None or not HEX32.fullmatch(uid):
                    bad += 1
                    hi.append(0)
                    lo.append(0)
                    continue
                # Two's-complement bit patterns in int64 (Spark has no unsigned type); viewed back as u8 below.
                for half, out in ((uid[:16], hi), (uid[16:], lo)):
                    v = int(half, 16)
                    out.append(v - (1 << 64) if v >= 1 << 63 else v)
            yield pa.RecordBatch.from_arrays(
                [pa.array(hi, pa.int64()), pa.array(lo, pa.int64()), pa.array([bad] + [0] * (len(hi) - 1), pa.int64())],
                names=["hi", "lo", "bad"],
            )

    schema = T.StructType([T.StructField(n, T.LongType(), False) for n in ("hi", "lo", "bad")])
    table = rows.select("uid").mapInArrow(halves, schema).toPandas()
    not_hex = int(table["bad"].sum()) if len(table) else 0
    if not_hex:
        return None, not_hex
    pairs = np.empty(len(table), np.dtype("u8,u8"))
    pairs["f0"] = table["hi"].to_numpy(np.int64).view(np.uint64)
    pairs["f1"] = table["lo"].to_numpy(np.int64).view(np.uint64)
    pairs.sort()
    return pairs, 0


def write_shards(ctx: Context, rows, per_shard: int) -> dict[str, Any]:
    """Every kept row into exactly one tar; a row without image bytes is an error, not a gap."""
    from pyspark.sql import functions as F

    run = ctx.run
    images = ctx.input("images")
    dl_stats = run.fs.read_json(f"{images.dir}/stats.json")
    ext = dl_stats.get("encode_format") or "jpg"
    located = rows.join(
        ctx.spark.read.parquet(images.path).select("uid", F.col("shard").alias("_src_shard"), F.col("key").alias("_src_key")),
        on="uid", how="left",
    )
    missing = located.where(F.col("_src_shard").isNull() | F.col("_src_key").isNull())
    n_missing = missing.count()
    if n_missing:
        first = [r.uid for r in missing.select("uid").orderBy("uid").limit(5).collect()]
        raise ExportError(f"export: {n_missing} kept uids have no image in {images.dir} (first: {', '.join(first)})")
    from pipeline.kernels.wds import MissingImageError

    used = [r._src_shard for r in located.select("_src_shard").distinct().collect()]
    gone = sorted(name for name in used if not run.fs.exists(f"{images.dir}/shards/{name}"))
    if gone:
        raise MissingImageError(
            f"export: cannot read the download shard {images.dir}/shards/{gone[0]}: it is gone "
            f"({len(gone)} of {len(used)} shards holding kept images); rerun download with --force"
        )
    order = located.orderBy("_src_shard", "_src_key", "uid")
    n = located.count()
    n_shards = (n + per_shard - 1) // per_shard
    out_dir = f"{ctx.dir}/shards"
    run.fs.mkdirs(out_dir)
    if n == 0:
        return {"count": 0, "total": 0, "bytes": 0, "samples_per_shard": per_shard, "sizes": {}}
    columns = located.columns
    shards_dir = f"{images.dir}/shards"
    tasks = max(1, min(n_shards, ctx.spark.sparkContext.defaultParallelism * 4))
    indexed = order.rdd.zipWithIndex().map(lambda p: (p[1] // per_shard, (p[1], p[0])))
    parts = indexed.partitionBy(tasks, lambda shard: shard % tasks)

    def write(items):
        from itertools import groupby

        from pipeline.kernels.wds import ImageReader, Sample, write_tar

        reader = ImageReader(shards_dir, ext)
        try:
            by_shard = sorted(items, key=lambda kv: kv[1][0])
            for shard, group in groupby(by_shard, key=lambda kv: kv[0]):
                members = [(idx, dict(zip(columns, row, strict=True))) for _, (idx, row) in group]

                def samples(members=members, shard=shard):
                    for idx, r in members:
                        key = f"{shard:05d}{idx % per_shard:0{KEY_DIGITS}d}"
                        meta = {k: v for k, v in r.items() if k not in ("text", "_src_shard", "_src_key")}
                        meta["key"] = key
                        yield Sample(key, reader.read(r["_src_shard"], r["_src_key"]), ext, r.get("text"), meta)

                count, size = write_tar(f"{out_dir}/{shard:05d}.tar", samples())
                yield shard, count, size
        finally:
            reader.close()

    try:
        written = sorted(parts.mapPartitions(write).collect())
    except Exception as exc:  # a task's MissingImageError reaches the driver wrapped in Spark's error
        said = next((line for line in str(exc).splitlines() if "MissingImageError: " in line), None)
        if said is None:
            raise
        raise MissingImageError(said.split("MissingImageError: ", 1)[1]) from None
    sizes = {f"{s:05d}.tar": c for s, c, _ in written}
    total = sum(sizes.values())
    if len(written) != n_shards or total != n:
        raise RuntimeError(f"export: wrote {len(written)} shards with {total} samples for {n_shards} shards of {n}; not complete")
    log.info("export: %d samples in %d shards -> %s", total, n_shards, out_dir)
    return {
        "count": n_shards, "total": total, "bytes": sum(b for _, _, b in written), "samples_per_shard": per_shard,
        "image_format": ext, "sizes": sizes,
    }


def describe(stats: dict, root: str) -> str:
    shards = stats.get("shards")
    where = f"{shards['total']} samples in {shards['count']} shards under {root}/export/shards" if shards else "no shards"
    ww = stats.get(WORLDWIDE)
    extra = f"; {ww['rows']['texts']} texts of {ww['images']} images in {root}/export/{WORLDWIDE}" if ww else ""
    return f"{where}; {stats['uid_list']}{extra}"


STAGE = Stage(
    name="export",
    config=ExportConfig,
    run=run,
    plan=plan,
    describe=describe,
    help="hand over the final subset: Parquet, a DataComp uid list, and WebDataset shards for training",
    inputs=(
        Input(
            "input", ("prune", "cluster", "filter", "embed", "download", "balance", "match", "ingest"),
            "a run folder (its nearest complete stage) or Parquet with uid: the rows to export",
        ),
        Input(
            "images", ("download",), "the download stage holding the image bytes (a run folder or its download folder)",
            optional=True,
        ),
    ),
)
