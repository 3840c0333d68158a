"""Download stage: fetch the images of a (curated) subset with img2dataset, behind the URL guard.

Reads a run folder (the latest complete text stage among balance, match, ingest) or a Parquet
folder with `uid`, `url` (and optionally `text`). Writes under `<run>/download/`:

- `shards/`: img2dataset's output folder: WebDataset tars (`NNNNN.tar`, each sample's json
  carries `uid`) with their per-shard metadata Parquet (`NNNNN.parquet`, every sample, failures
  included) and `NNNNN_stats.json`; or, with output_format=parquet, `NNNNN.parquet` holding the
  image bytes (`jpg` column, null for failures) and the same metadata.
- `data/`: one row per downloaded uid (schemas/download.json): uid, url, text, shard, key,
  width, height, original_width, original_height, sha256, then the input's other columns.
- the ledger `decisions/stage=download`: kept, or dropped with url_refused (the guard's reason,
  before any request, or on a redirect) or download_failed (img2dataset's error message).

`retry_failed` fetches again only the uids whose last status is download_failed, into new
shards (shard ids continue after the existing ones), and recommits the stage with the earlier
successes and shards kept.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import time
import typing
from dataclasses import dataclass, field
from typing import Any

from pipeline.core import reasons as R
from pipeline.core.config import ConfigError
from pipeline.core.errors import UserError
from pipeline.core.folder import now
from pipeline.core.protocol import Context, Input, Output, Plan, Stage


@dataclass(frozen=True)
class DownloadConfig:
    image_size: int = 256
    # img2dataset's resize modes: no, keep_ratio, keep_ratio_largest, center_crop, border.
    resize_mode: str = "keep_ratio"
    resize_only_if_bigger: bool = False
    # webdataset (tars + per-shard Parquet metadata) or parquet (image bytes in the rows).
    output_format: str = "webdataset"
    encode_format: str = "jpg"
    encode_quality: int = 95
    processes: int = 2
    threads: int = 16
    samples_per_shard: int = 10000
    # Seconds per socket operation (connect, each read); a slow server past it is a failure.
    timeout: float = 10.0
    retries: int = 0
    # auto: img2dataset's pyspark distributor when Spark's master is not local, else multiprocessing.
    distributor: str = "auto"
    # Images whose header claims more pixels than this are refused before decoding
    # (decompression bombs); Pillow's own warning threshold by default.
    max_image_pixels: int = 89_478_485
    user_agent_token: str | None = "img2dataset"
    # The URL guard: refuse non-http(s) schemes, credentials in URLs, and hosts resolving to
    # private, loopback, link-local, multicast, reserved or cloud-metadata addresses.
    # allow_hosts lifts it for listed hosts, addresses or networks ("127.0.0.1", "10.0.0.0/8",
    # "images.internal"); allow_private_hosts switches the address checks off (not the scheme check).
    allow_hosts: tuple[str, ...] = field(default=(), metadata={"aliases": ("--allow-host",)})
    allow_private_hosts: bool = False
    # Fetch again only the uids whose last status is download_failed, into new shards beside
    # the earlier ones (an action on a complete stage, not a setting of what it makes).
    retry_failed: bool = False
    # Blur the boxes of the input's face_bboxes column (DataComp's face boxes, [x1, y1, x2, y2]
    # as fractions of width and height) with img2dataset's bounding-box blurrer before storing.
    blur_faces: bool = False

    BBOX_COLUMN: typing.ClassVar[str] = "face_bboxes"
    RESIZE_MODES: typing.ClassVar[tuple[str, ...]] = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")
    OUTPUT_FORMATS: typing.ClassVar[tuple[str, ...]] = ("webdataset", "parquet")
    ENCODE_FORMATS: typing.ClassVar[tuple[str, ...]] = ("jpg", "png", "webp")
    DISTRIBUTORS: typing.ClassVar[tuple[str, ...]] = ("auto", "multiprocessing", "pyspark")

    def validate(self, where: str) -> None:
        if self.image_size < 8:
            raise ConfigError(f"{where}.image_size: must be >= 8, got {self.image_size}")
        for name, allowed in (
            ("resize_mode", self.RESIZE_MODES), ("output_format", self.OUTPUT_FORMATS),
            ("distributor", self.DISTRIBUTORS), ("encode_format", self.ENCODE_FORMATS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{where}.{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in ("processes", "threads", "samples_per_shard", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be >= 1, got {getattr(self, name)}")
        if self.timeout <= 0:
            raise ConfigError(f"{where}.timeout: must be > 0, got {self.timeout}")
        if self.retries < 0:
            raise ConfigError(f"{where}.retries: must be >= 0, got {self.retries}")
        from pipeline.kernels.urlguard import parse_allow_list

        try:
            parse_allow_list(self.allow_hosts)
        except ValueError as exc:
            raise ConfigError(f"{where}.allow_hosts: {exc}") from None


log = logging.getLogger(__name__)

STAGE_NAME = "download"
# img2dataset's digits in shard names (00042.tar): up to 100k shards per stage.
OOM_SHARD_COUNT = 5
# Per-sample columns img2dataset writes (or reserves); the input's own columns with these names
# are not passed through.
IMG2DATASET_COLUMNS = (
    "key", "caption", "url", "status", "error_message", "width", "height", "original_width",
    "original_height", "exif", "md5", "sha256", "sha512", "jpg", "png", "webp", "txt",
)
NEVER_REPORTED = "img2dataset never reported this uid (its shard failed; see the download log)"


class DownloadError(UserError):
    """The download stage cannot run on this input or environment."""


def _img2dataset_missing() -> DownloadError:
    return DownloadError(
        "img2dataset is not installed: pip install 'curate-pipeline[download]' (or pip install img2dataset)"
    )


# --------------------------------------------------------------------------- input and guard


def guard_policy(cfg) -> Any:
    from pipeline.kernels.urlguard import GuardPolicy

    return GuardPolicy(allow=tuple(cfg.allow_hosts), allow_private=cfg.allow_private_hosts)


def with_url_refusals(df, policy, threads: int = 16):
    """uid, _refusal (null = may be fetched) for every row of `df` (needs uid, url).

    The DNS look-ups run on the executors, once per distinct host in a batch, in threads.
    """
    import pandas as pd

    from pipeline.kernels.urlguard import check_hosts

    def judge(batches):
        for batch in batches:
            yield pd.DataFrame({"uid": batch["uid"], "_refusal": check_hosts(batch["url"].tolist(), policy, threads)})

    return df.select("uid", "url").mapInPandas(judge, "uid string, _refusal string")


# --------------------------------------------------------------------------- img2dataset


def choose_distributor(spark, setting: str) -> str:
    if setting != "auto":
        return setting
    return "multiprocessing" if spark.sparkContext.master.startswith("local") else "pyspark"


def _check_face_bboxes(df, column: str) -> None:
    """blur_faces needs `column` as a list of [x1, y1, x2, y2] number lists: a one-line error otherwise."""
    from pyspark.sql import types as T

    if column not in df.columns:
        raise ConfigError(
            f"download.blur_faces: the input has no {column} column to blur; columns present: {', '.join(df.columns)}"
        )
    kind = df.schema[column].dataType
    if not (
        isinstance(kind, T.ArrayType) and isinstance(kind.elementType, T.ArrayType)
        and isinstance(kind.elementType.elementType, T.NumericType)
    ):
        raise ConfigError(
            f"download.blur_faces: column {column} is {kind.simpleString()}, not a list of [x1, y1, x2, y2] number lists"
        )


def fetch_images(
    input_dir: str, shards_dir: str, work_dir: str, cfg, with_text: bool, start_shard: int, distributor: str, policy
) -> None:
    """Run img2dataset over the Parquet files in `input_dir` (uid, url[, text]) into `shards_dir`.

    img2dataset's own pieces (reader, writers, distributors, progress logger) do the work; the
    guarded downloader and the bounded resizer replace its defaults (see pipeline.kernels.fetch).
    """
    import fsspec

    # albumentations' update check (img2dataset imports it) is off: pipeline/__init__.py.
    try:
        from img2dataset.distributor import multiprocessing_distributor, pyspark_distributor
        from img2dataset.logger import LoggerProcess
        from img2dataset.reader import Reader
        from img2dataset.writer import ParquetSampleWriter, WebDatasetSampleWriter

        from pipeline.kernels.fetch import BoundedResizer, GuardedDownloader
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "img2dataset":
            raise
        raise _img2dataset_missing() from None

    fs, _ = fsspec.core.url_to_fs(shards_dir)
    for folder in (shards_dir, work_dir):
        fs.makedirs(fsspec.core.url_to_fs(folder)[1], exist_ok=True)
    # With blur_faces the boxes ride along in each shard; img2dataset's downloader hands a row's
    # boxes to the resizer, which blurs them (rows with null boxes are stored as they are).
    bbox_col = cfg.BBOX_COLUMN if cfg.blur_faces else None
    reader = Reader(
        input_dir, "parquet", "url", "text" if with_text else None, None, None, ["uid", *([bbox_col] if bbox_col else [])],
        cfg.samples_per_shard, set(), work_dir, start_shard,
    )
    blurrer = None
    if bbox_col:
        from img2dataset.blurrer import BoundingBoxBlurrer

        blurrer = BoundingBoxBlurrer()
    resizer = BoundedResizer(
        image_size=cfg.image_size,
        resize_mode=cfg.resize_mode,
        resize_only_if_bigger=cfg.resize_only_if_bigger,
        encode_quality=cfg.encode_quality,
        encode_format=cfg.encode_format,
        max_image_pixels=cfg.max_image_pixels,
        blurrer=blurrer,
    )
    downloader = GuardedDownloader(
        sample_writer_class=WebDatasetSampleWriter if cfg.output_format == "webdataset" else ParquetSampleWriter,
        resizer=resizer,
        thread_count=cfg.threads,
        save_caption=with_text,
        extract_exif=False,
        output_folder=shards_dir,
        column_list=reader.column_list,
        timeout=cfg.timeout,
        number_sample_per_shard=cfg.samples_per_shard,
        oom_shard_count=OOM_SHARD_COUNT,
        compute_hash="sha256",
        verify_hash_type=None,
        encode_format=cfg.encode_format,
        retries=cfg.retries,
        user_agent_token=cfg.user_agent_token,
        # img2dataset's defaults: honour X-Robots-Tag noai/noindex opt-outs.
        disallowed_header_directives=["noai", "noimageai", "noindex", "noimageindex"],
        blurring_bbox_col=bbox_col,
        guard=policy,
    )
    # img2dataset's progress: per-shard and total speed and the error table, from its stats files.
    distribute = multiprocessing_distributor if distributor == "multiprocessing" else pyspark_distributor
    with _stdout_to_stderr():
        progress = LoggerProcess(shards_dir, False, "img2dataset", {"stage": STAGE_NAME})
        progress.done_shards = set()
        progress.start()
        try:
            distribute(cfg.processes, downloader, reader, 1000, 1)
        finally:
            progress.join()


@contextlib.contextmanager
def _stdout_to_stderr():
    """img2dataset prints its progress to stdout, in this process and its children: send it to stderr.

    stdout stays for the stage's JSON summary (`curate download ... | jq`). Done on the file
    descriptor, which spawned processes inherit.
    """
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout at all
        yield
        return
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _shard_files(run, shards_dir: str) -> dict[int, list[str]]:
    """Files in an img2dataset output folder by shard id (NNNNN.tar, NNNNN.parquet, NNNNN_stats.json)."""
    out: dict[int, list[str]] = {}
    for name in run.fs.list(shards_dir):
        head = name.split(".", 1)[0].split("_", 1)[0]
        if head.isdigit():
            out.setdefault(int(head), []).append(name)
    return out


def _complete_shards(run, shards_dir: str, first: int = 0) -> tuple[dict[int, list[str]], dict[str, Any]]:
    """Shards from `first` on that img2dataset finished (it writes NNNNN_stats.json last); partial ones are removed.

    Returns the complete shards' files and img2dataset's summed statistics.
    """
    from collections import Counter

    import fsspec

    totals: dict[str, Any] = {"count": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0}
    errors: Counter = Counter()
    complete: dict[int, list[str]] = {}
    for shard, names in sorted(_shard_files(run, shards_dir).items()):
        if shard < first:
            continue
        stats_name = f"{shard:0{OOM_SHARD_COUNT}d}_stats.json"
        if stats_name not in names:
            log.warning("download: shard %d did not finish; removing its partial files %s", shard, names)
            for name in names:
                run.fs.delete(f"{shards_dir}/{name}")
            continue
        complete[shard] = names
        stats = run.fs.read_json(f"{shards_dir}/{stats_name}")
        for k in ("count", "successes", "failed_to_download", "failed_to_resize"):
            totals[k] += int(stats.get(k, 0))
        errors.update({k: int(v) for k, v in stats.get("status_dict", {}).items() if k != "success"})
    totals["shards"] = len(complete)
    fs, base = fsspec.core.url_to_fs(shards_dir)
    totals["bytes_written"] = sum(int(fs.size(f"{base}/{n}")) for names in complete.values() for n in names)
    return complete, {**totals, "top_errors": dict(errors.most_common(20))}


def read_results(spark, shards_dir: str, shards: dict[int, list[str]], output_format: str):
    """img2dataset's per-sample rows of the complete shards, with the shard file that holds each image."""
    from pyspark.sql import functions as F

    metas = [f"{shards_dir}/{s:0{OOM_SHARD_COUNT}d}.parquet" for s in sorted(shards)]
    image_ext = ".tar" if output_format == "webdataset" else ".parquet"
    df = spark.read.parquet(*metas)
    return df.select(
        "uid",
        F.concat(F.regexp_extract(F.input_file_name(), r"([0-9]+)\.parquet$", 1), F.lit(image_ext)).alias("shard"),
        "key", "status", "error_message", "width", "height", "original_width", "original_height", "sha256",
    )


# --------------------------------------------------------------------------- decisions


def with_download_decisions(todo, refusals, results):
    """`todo` with _reason/_detail: url_refused (guard), kept (success), download_failed (the rest).

    A uid the guard let through but img2dataset never reported is download_failed with an
    explicit detail, never lost.
    """
    from pyspark.sql import functions as F

    from pipeline.kernels.urlguard import REFUSED_PREFIX

    df = todo.join(refusals, on="uid", how="left").join(results, on="uid", how="left")
    refused_later = F.col("error_message").startswith(REFUSED_PREFIX)
    reason = (
        F.when(F.col("_refusal").isNotNull(), F.lit(R.URL_REFUSED))
        .when(F.col("status") == "success", F.lit(None))
        .when(refused_later, F.lit(R.URL_REFUSED))
        .otherwise(F.lit(R.DOWNLOAD_FAILED))
    )
    detail = (
        F.when(F.col("_refusal").isNotNull(), F.col("_refusal"))
        .when(F.col("status") == "success", F.lit(None))
        .when(refused_later, F.expr(f"substring(error_message, {len(REFUSED_PREFIX) + 1})"))
        .when(F.col("status").isNull(), F.lit(NEVER_REPORTED))
        .otherwise(F.coalesce(F.col("error_message"), F.col("status")))
    )
    return df.withColumn("_reason", reason.cast("string")).withColumn("_detail", detail.cast("string")).drop(
        "_refusal", "status", "error_message"
    )


# --------------------------------------------------------------------------- the runner


def plan(ctx: Context) -> Plan:
    """A retry works on the complete stage: its shards, data and ledger stay; everything else is redone whole."""
    d: DownloadConfig = ctx.cfg
    if importlib.util.find_spec("img2dataset") is None:
        raise _img2dataset_missing()
    run = ctx.run
    previous = run.marker(STAGE_NAME)
    retry = d.retry_failed and not ctx.force
    if retry and previous is None:
        log.warning("download: no complete download in %s to retry; downloading everything", ctx.dir)
        retry = False
    if retry:
        from pyspark.sql import functions as F

        failed = ctx.spark.read.parquet(run.ledger_dir(STAGE_NAME)).where(F.col("reason") == R.DOWNLOAD_FAILED)
        if failed.limit(1).count() == 0:
            log.info("download: no download_failed uids to retry in %s", ctx.dir)
            retry = False
    ctx.state.update(retry=retry, old_stats=run.stats(STAGE_NAME) if retry else {})
    if retry:
        return Plan(redo=True, keep=("shards", "data"), keep_ledger=True)
    return Plan()


def run(ctx: Context) -> Output:
    """Download the images of the input into `<run>/download`; see the module docstring."""
    from pyspark.sql import functions as F

    from pipeline.core.contracts import require_columns, select_contract

    d: DownloadConfig = ctx.cfg
    spark, run = ctx.spark, ctx.run
    retry, old_stats = ctx.state["retry"], ctx.state["old_stats"]
    source = ctx.input().path
    df = spark.read.parquet(source)
    require_columns(df, ("uid", "url"), STAGE_NAME)
    if d.blur_faces:
        _check_face_bboxes(df, d.BBOX_COLUMN)
    with_text = "text" in df.columns
    if not with_text:
        df = df.withColumn("text", F.lit(None).cast("string"))
    # The input's other columns pass through, except names this stage writes itself.
    own = {"uid", "url", "text", "shard", *IMG2DATASET_COLUMNS}
    extras = [c for c in df.columns if c not in own and not c.startswith("_")]
    df = df.select("uid", "url", "text", *extras)
    shards_dir = f"{ctx.dir}/shards"

    carried = None
    if retry:
        if old_stats.get("output_format") != d.output_format:
            raise DownloadError(
                f"--retry-failed: the stage holds {old_stats.get('output_format')} shards but output_format is "
                f"{d.output_format}; use the same format, or --force to download everything again"
            )
        # The earlier decisions are copied aside (the ledger folder is rewritten whole); those
        # that stand are carried over, the download_failed ones are tried again.
        spark.read.parquet(run.ledger_dir(STAGE_NAME)).write.parquet(ctx.scratch("ledger"))
        run.fs.delete(run.ledger_dir(STAGE_NAME))
        ledger = spark.read.parquet(ctx.scratch("ledger"))
        failed = ledger.where(F.col("reason") == R.DOWNLOAD_FAILED).select("uid")
        todo = df.join(failed, on="uid", how="left_semi")
        carried = ledger.join(failed, on="uid", how="left_anti")
        start_shard = max(_shard_files(run, shards_dir), default=-1) + 1
    else:
        todo, start_shard = df, 0
    counts = todo.agg(
        F.count(F.lit(1)).alias("rows"), F.countDistinct("uid").alias("uids"),
        F.sum(F.col("uid").isNull().cast("int")).alias("null_uids"),
    ).first()
    n_todo = counts["rows"]
    if counts["null_uids"]:
        raise DownloadError(f"{source}: {counts['null_uids']} rows have no uid; run ingest first (it assigns uids)")
    if counts["uids"] != n_todo:
        raise DownloadError(f"{source}: {n_todo - counts['uids']} repeated uids; run ingest first (it drops duplicate uids)")

    policy = guard_policy(d)
    # The guard's verdicts are written once: DNS answers must not change between the fetch and the ledger.
    with_url_refusals(todo, policy, d.threads).write.parquet(ctx.scratch("refusals"))
    refusals = spark.read.parquet(ctx.scratch("refusals"))
    allowed = todo.join(refusals.where(F.col("_refusal").isNull()), on="uid", how="left_semi")
    n_allowed = allowed.count()
    distributor = choose_distributor(spark, d.distributor)
    t_fetch = time.time()
    if n_allowed:
        boxes = [F.col(d.BBOX_COLUMN).cast("array<array<double>>")] if d.blur_faces else []
        allowed.select("uid", "url", "text", *boxes).orderBy("uid").write.parquet(ctx.scratch("input"))
        log.info("download: fetching %d of %d urls with img2dataset (%s distributor)", n_allowed, n_todo, distributor)
        fetch_images(ctx.scratch("input"), shards_dir, ctx.scratch("work"), d, with_text, start_shard, distributor, policy)
    else:
        run.fs.mkdirs(shards_dir)
    fetch_seconds = time.time() - t_fetch
    shards, totals = _complete_shards(run, shards_dir, first=start_shard)
    if shards:
        results = read_results(spark, shards_dir, shards, d.output_format)
    else:
        results = spark.createDataFrame(
            [], "uid string, shard string, key string, status string, error_message string, width int, height int, "
            "original_width int, original_height int, sha256 string",
        )
    attempt = {
        "at": now(), "kind": "retry_failed" if retry else "full",
        "uids": n_todo, "refused_by_guard": n_todo - n_allowed, "first_shard": start_shard,
        "distributor": distributor, "fetch_seconds": round(fetch_seconds, 3), "img2dataset": totals,
    }
    attempts = [*old_stats.get("attempts", []), attempt]
    log.info(
        "download: img2dataset fetched %d ok, %d download failures, %d decode failures",
        totals["successes"], totals["failed_to_download"], totals["failed_to_resize"],
    )
    return Output(
        decided=with_download_decisions(todo, refusals, results),
        shape=lambda kept: select_contract(kept, "download", extra=extras),
        carried_ledger=carried,
        append=retry,
        stats={
            "input": source, "output_format": d.output_format, "image_size": d.image_size, "resize_mode": d.resize_mode,
            "guard": {"allow_hosts": list(d.allow_hosts), "allow_private_hosts": d.allow_private_hosts},
            "img2dataset": {k: sum(a["img2dataset"].get(k, 0) for a in attempts) for k in totals if k != "top_errors"},
            "attempts": attempts,
        },
    )


STAGE = Stage(
    name="download",
    config=DownloadConfig,
    run=run,
    plan=plan,
    help="fetch the images of a subset with img2dataset, behind the URL guard",
    inputs=(
        Input(
            "input", ("balance", "match", "ingest"),
            "a run folder (its balance, match or ingest output, the first complete) or a Parquet folder with uid, url[, text]",
        ),
    ),
    schemas={"data": "download"},
    # Parallelism does not change what is written; a retry is an action on the stage's output.
    volatile=("processes", "threads", "distributor", "retry_failed"),
)
