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

import argparse
import contextlib
import functools
import importlib.util
import logging
import os
import sys
import time
import uuid
from typing import Any

from pipeline import reasons as R
from pipeline.config import PipelineConfig
from pipeline.errors import UserError
from pipeline.runs import MARKER

log = logging.getLogger(__name__)

STAGE = "download"
# Text stages whose output can be downloaded, most curated first.
TEXT_STAGES = ("balance", "match", "ingest")
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


def resolve_source(run, path: str) -> str:
    """The Parquet folder to download: a run's latest complete text stage, a stage folder, or `path`."""
    path = path.rstrip("/")
    for stage in TEXT_STAGES:
        if run.fs.exists(f"{path}/{stage}/{MARKER}"):
            return f"{path}/{stage}/data"
    if run.fs.exists(f"{path}/{MARKER}") and run.fs.exists(f"{path}/data"):
        return f"{path}/data"
    started = [s for s in TEXT_STAGES if run.fs.exists(f"{path}/{s}")]
    if started:
        raise FileNotFoundError(f"{path}: no complete text stage ({', '.join(started)} incomplete); rerun it first")
    if not run.fs.exists(path):
        raise FileNotFoundError(f"input not found: {path}")
    return path


def guard_policy(cfg) -> Any:
    from pipeline.urlguard import GuardPolicy

    return GuardPolicy(allow=tuple(cfg.allow_hosts), allow_private=cfg.allow_private_hosts)


def with_url_refusals(df, policy, threads: int = 16):
    """uid, _refusal (null = may be fetched) for every row of `df` (needs uid, url).

    The DNS look-ups run on the executors, once per distinct host in a batch, in threads.
    """
    import pandas as pd

    from pipeline.urlguard import check_hosts

    def judge(batches):
        for batch in batches:
            yield pd.DataFrame({"uid": batch["uid"], "_refusal": check_hosts(batch["url"].tolist(), policy, threads)})

    return df.select("uid", "url").mapInPandas(judge, "uid string, _refusal string")


# --------------------------------------------------------------------------- img2dataset


def choose_distributor(spark, setting: str) -> str:
    if setting != "auto":
        return setting
    return "multiprocessing" if spark.sparkContext.master.startswith("local") else "pyspark"


def fetch_images(
    input_dir: str, shards_dir: str, work_dir: str, cfg, with_text: bool, start_shard: int, distributor: str, policy
) -> None:
    """Run img2dataset over the Parquet files in `input_dir` (uid, url[, text]) into `shards_dir`.

    img2dataset's own pieces (reader, writers, distributors, progress logger) do the work; the
    guarded downloader and the bounded resizer replace its defaults (see pipeline.fetch).
    """
    import fsspec

    # albumentations' update check (img2dataset imports it) is off: pipeline/__init__.py.
    try:
        from img2dataset.distributor import multiprocessing_distributor, pyspark_distributor
        from img2dataset.logger import LoggerProcess
        from img2dataset.reader import Reader
        from img2dataset.writer import ParquetSampleWriter, WebDatasetSampleWriter

        from pipeline.fetch import BoundedResizer, GuardedDownloader
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "img2dataset":
            raise
        raise _img2dataset_missing() from None

    fs, _ = fsspec.core.url_to_fs(shards_dir)
    for folder in (shards_dir, work_dir):
        fs.makedirs(fsspec.core.url_to_fs(folder)[1], exist_ok=True)
    reader = Reader(
        input_dir, "parquet", "url", "text" if with_text else None, None, None, ["uid"],
        cfg.samples_per_shard, set(), work_dir, start_shard,
    )
    resizer = BoundedResizer(
        image_size=cfg.image_size,
        resize_mode=cfg.resize_mode,
        resize_only_if_bigger=cfg.resize_only_if_bigger,
        encode_quality=cfg.encode_quality,
        encode_format=cfg.encode_format,
        max_image_pixels=cfg.max_image_pixels,
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
        guard=policy,
    )
    # img2dataset's progress: per-shard and total speed and the error table, from its stats files.
    distribute = multiprocessing_distributor if distributor == "multiprocessing" else pyspark_distributor
    with _stdout_to_stderr():
        progress = LoggerProcess(shards_dir, False, "img2dataset", {"stage": STAGE})
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


def _complete_shards(run, shards_dir: str) -> tuple[dict[int, list[str]], dict[str, Any]]:
    """Shards img2dataset finished (it writes NNNNN_stats.json last); partial ones are removed.

    Returns the complete shards' files and img2dataset's summed statistics.
    """
    from collections import Counter

    import fsspec

    totals: dict[str, Any] = {"count": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0}
    errors: Counter = Counter()
    complete: dict[int, list[str]] = {}
    for shard, names in sorted(_shard_files(run, shards_dir).items()):
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

    from pipeline.urlguard import REFUSED_PREFIX

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


def _shape(kept, extras: list[str]):
    from pipeline.contracts import select_contract

    return select_contract(kept, "download", extra=extras)


# --------------------------------------------------------------------------- the runner


def _fingerprint(run, source: str, cfg) -> str:
    from pipeline.runs import config_hash

    # Parallelism does not change what is written; everything else may.
    skip = {"processes", "threads", "distributor"}
    return config_hash({"input": run.fs.qualify(source), "download": {k: v for k, v in cfg.__dict__.items() if k not in skip}})


def run_download(
    spark, input_path: str, run_root: str, cfg: PipelineConfig, force: bool = False, retry_failed: bool = False
):
    """Download the images of `input_path` into `<run_root>/download`; see the module docstring."""
    from pyspark.sql import functions as F

    from pipeline.contracts import require_columns
    from pipeline.ledger import split_decisions
    from pipeline.runs import Run, StageResult, _now

    d = cfg.download
    if importlib.util.find_spec("img2dataset") is None:
        raise _img2dataset_missing()
    run = Run(spark, run_root)
    stage_dir = run.stage_dir(STAGE)
    source = resolve_source(run, input_path)
    fingerprint = _fingerprint(run, source, d)
    previous = run.marker(STAGE)
    if retry_failed and previous is None:
        log.warning("download: no complete download in %s to retry; downloading everything", stage_dir)
        retry_failed = False
    if force:
        retry_failed = False
    if not force and not retry_failed and run.is_complete(STAGE, fingerprint):
        log.info("download: complete in %s with the same input and config; skipping", stage_dir)
        return StageResult(STAGE, stage_dir, run.stats(STAGE), skipped=True)
    started = time.time()

    df = spark.read.parquet(source)
    require_columns(df, ("uid", "url"), STAGE)
    with_text = "text" in df.columns
    if not with_text:
        df = df.withColumn("text", F.lit(None).cast("string"))
    # The input's other columns pass through, except names this stage writes itself.
    own = {"uid", "url", "text", "shard", *IMG2DATASET_COLUMNS}
    extras = [c for c in df.columns if c not in own and not c.startswith("_")]
    df = df.select("uid", "url", "text", *extras)

    old_stats: dict[str, Any] = {}
    if retry_failed:
        old_stats = run.stats(STAGE)
        if old_stats.get("output_format") != d.output_format:
            raise DownloadError(
                f"--retry-failed: the stage holds {old_stats.get('output_format')} shards but output_format is "
                f"{d.output_format}; use the same format, or --force to download everything again"
            )
        if previous.get("fingerprint") != fingerprint:
            log.warning("download: retrying with a different input or config than the earlier attempts used")
        failed = spark.read.parquet(run.ledger_dir(STAGE)).where(F.col("reason") == R.DOWNLOAD_FAILED).select("uid")
        todo = df.join(failed, on="uid", how="left_semi")
        existing = _shard_files(run, f"{stage_dir}/shards")
        start_shard = max(existing, default=-1) + 1
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
    if retry_failed and n_todo == 0:
        log.info("download: no download_failed uids to retry in %s", stage_dir)
        return StageResult(STAGE, stage_dir, run.stats(STAGE), skipped=True)

    tmp = f"{run.root}/_tmp/{STAGE}-{uuid.uuid4().hex[:12]}"
    policy = guard_policy(d)
    # The guard's verdicts are written once: DNS answers must not change between the fetch and the ledger.
    with_url_refusals(todo, policy, d.threads).write.parquet(f"{tmp}/refusals")
    refusals = spark.read.parquet(f"{tmp}/refusals")
    allowed = todo.join(refusals.where(F.col("_refusal").isNull()), on="uid", how="left_semi")
    n_allowed = allowed.count()
    log.debug("download: guard verdicts for %d uids at %.1fs", n_todo, time.time() - started)
    distributor = choose_distributor(spark, d.distributor)
    shards_dir = f"{tmp}/shards"
    t_fetch = time.time()
    if n_allowed:
        allowed.select("uid", "url", "text").orderBy("uid").write.parquet(f"{tmp}/input")
        log.info("download: fetching %d of %d urls with img2dataset (%s distributor)", n_allowed, n_todo, distributor)
        fetch_images(f"{tmp}/input", shards_dir, f"{tmp}/work", d, with_text, start_shard, distributor, policy)
    else:
        run.fs.mkdirs(shards_dir)
    fetch_seconds = time.time() - t_fetch
    log.debug("download: img2dataset done at %.1fs (%.1fs)", time.time() - started, fetch_seconds)
    shards, totals = _complete_shards(run, shards_dir)
    if shards:
        results = read_results(spark, shards_dir, shards, d.output_format)
    else:
        results = spark.createDataFrame(
            [], "uid string, shard string, key string, status string, error_message string, width int, height int, "
            "original_width int, original_height int, sha256 string",
        )
    decided = with_download_decisions(todo, refusals, results)
    decided.write.parquet(f"{tmp}/all")
    kept, ledger = split_decisions(spark.read.parquet(f"{tmp}/all"))
    data = _shape(kept, extras)
    if retry_failed:
        retried = todo.select("uid")
        old_data = spark.read.parquet(run.data_dir(STAGE))
        old_ledger = spark.read.parquet(run.ledger_dir(STAGE)).join(retried, on="uid", how="left_anti")
        data = old_data.unionByName(data, allowMissingColumns=True)
        ledger = old_ledger.unionByName(ledger)
    data.write.option("compression", "zstd").parquet(f"{tmp}/data")
    ledger.write.option("compression", "zstd").parquet(f"{tmp}/ledger")
    run.fs.delete(f"{tmp}/all")

    log.debug("download: data and ledger written at %.1fs", time.time() - started)
    written = spark.read.parquet(f"{tmp}/ledger")
    by = {(r["decision"], r["reason"]): r["count"] for r in written.groupBy("decision", "reason").count().collect()}
    kept_n = sum(n for (dec, _), n in by.items() if dec == R.KEPT)
    dropped = dict(sorted((reason, n) for (dec, reason), n in by.items() if dec == R.DROPPED))
    expected_in = n_todo + (old_stats.get("rows_in", 0) - n_todo if retry_failed else 0)
    n_rows, n_uids = written.count(), written.select("uid").distinct().count()
    data_n = spark.read.parquet(f"{tmp}/data").count()
    if n_rows != expected_in or n_uids != n_rows or data_n != kept_n:
        raise RuntimeError(
            f"download: ledger has {n_rows} rows for {n_uids} uids, expected {expected_in}; "
            f"{data_n} data rows for {kept_n} kept; not committing"
        )

    attempt = {
        "at": _now(), "kind": "retry_failed" if retry_failed else "full", "fingerprint": fingerprint,
        "uids": n_todo, "refused_by_guard": n_todo - n_allowed, "first_shard": start_shard,
        "distributor": distributor, "fetch_seconds": round(fetch_seconds, 3), "img2dataset": totals,
    }
    attempts = [*old_stats.get("attempts", []), attempt]
    summed = {k: sum(a["img2dataset"].get(k, 0) for a in attempts) for k in totals if k != "top_errors"}
    stats = {
        "stage": STAGE, "rows_in": n_rows, "kept": kept_n, "dropped": dropped, "dropped_total": sum(dropped.values()),
        "input": source, "output_format": d.output_format, "image_size": d.image_size, "resize_mode": d.resize_mode,
        "guard": {"allow_hosts": list(d.allow_hosts), "allow_private_hosts": d.allow_private_hosts},
        "img2dataset": summed, "attempts": attempts,
        "seconds": round(time.time() - started, 3), "finished": _now(),
    }
    for name in ("refusals", "input", "work"):
        run.fs.delete(f"{tmp}/{name}")
    _commit(run, tmp, sorted(n for names in shards.values() for n in names), stats, fingerprint, retry_failed)
    log.info(
        "download: %d in, %d kept, %d dropped %s in %.1fs (img2dataset: %d ok, %d download failures, %d decode failures)",
        n_rows, kept_n, stats["dropped_total"], dropped, stats["seconds"],
        totals["successes"], totals["failed_to_download"], totals["failed_to_resize"],
    )
    return StageResult(STAGE, stage_dir, stats)


def _commit(run, tmp: str, shard_names: list[str], stats: dict, fingerprint: str, append_shards: bool) -> None:
    """Move the new outputs in; the marker goes last, so a crash leaves the stage visibly incomplete.

    A full download replaces the whole stage folder. A retry keeps the earlier shards and moves
    the new shard files beside them (their ids continue after the earlier ones).
    """
    from pipeline.runs import _now

    stage_dir = run.stage_dir(STAGE)
    run.fs.write_json(f"{tmp}/stats.json", stats)
    run.fs.delete(f"{stage_dir}/{MARKER}")
    run.fs.delete(run.ledger_dir(STAGE))
    run.fs.rename(f"{tmp}/ledger", run.ledger_dir(STAGE))
    if append_shards:
        for name in shard_names:
            run.fs.rename(f"{tmp}/shards/{name}", f"{stage_dir}/shards/{name}")
        for name in ("data", "stats.json"):
            run.fs.delete(f"{stage_dir}/{name}")
            run.fs.rename(f"{tmp}/{name}", f"{stage_dir}/{name}")
        run.fs.delete(tmp)
    else:
        run.fs.delete(stage_dir)
        run.fs.rename(tmp, stage_dir)
    run.fs.write_json(f"{stage_dir}/{MARKER}", {"stage": STAGE, "fingerprint": fingerprint, "at": _now()})


# --------------------------------------------------------------------------- command line


def add_cli(subparsers: Any) -> None:
    """Register `download` on the `curate` command's subparsers."""
    from pipeline.cli import _common
    from pipeline.config import DownloadConfig as D

    p = subparsers.add_parser("download", help="fetch the images of a subset with img2dataset, behind the URL guard")
    p.add_argument("--input", required=True, help="a run folder (its balance, match or ingest output) or a Parquet folder with uid, url[, text]")
    p.add_argument("--output", required=True, help="the run folder")
    p.add_argument("--retry-failed", action="store_true", help="fetch again only the uids that failed last time")
    p.add_argument(
        "--allow-private-hosts", action="store_true", default=None,
        help="switch off the guard's address checks (private, loopback, link-local...); schemes are still checked",
    )
    p.add_argument(
        "--allow-host", action="append", metavar="HOST", dest="allow_hosts",
        help="allow this host name, address or network although it is not public (repeatable), e.g. 127.0.0.1",
    )
    p.add_argument("--image-size", type=int, help="resize target in pixels (default 256)")
    p.add_argument("--resize-mode", choices=D.RESIZE_MODES, help="img2dataset resize mode (default keep_ratio)")
    p.add_argument("--output-format", choices=D.OUTPUT_FORMATS, help="webdataset (default) or parquet shards")
    p.add_argument("--processes", type=int, help="download processes (default 2)")
    p.add_argument("--threads", type=int, help="download threads per process (default 16)")
    p.add_argument("--timeout", type=float, help="seconds per connect/read (default 10)")
    p.add_argument("--distributor", choices=D.DISTRIBUTORS, help="auto (default), multiprocessing or pyspark")
    p.add_argument("--force", action="store_true", help="redo the stage even if it is complete")
    _common(p)
    p.set_defaults(func=cmd_download)


def cmd_download(args: argparse.Namespace) -> int:
    from pipeline.cli import _stage

    overrides = {
        "download.allow_private_hosts": args.allow_private_hosts,
        "download.allow_hosts": args.allow_hosts,
        "download.image_size": args.image_size,
        "download.resize_mode": args.resize_mode,
        "download.output_format": args.output_format,
        "download.processes": args.processes,
        "download.threads": args.threads,
        "download.timeout": args.timeout,
        "download.distributor": args.distributor,
    }
    return _stage(args, overrides, functools.partial(run_download, retry_failed=args.retry_failed), args.input)
