"""The embed stage: open_clip image and text embeddings per input shard, or precomputed ones.

Reads a run folder whose download stage is complete, an img2dataset output folder (WebDataset
tars or Parquet with image bytes) or a folder of image files; writes `<run>/embed/shards/
<shard>.parquet` per input shard (resumable: a finished shard is skipped on rerun) and
commits `<run>/embed/data` (uid, image_embedding, text_embedding, text; L2-normalised
float32) with one ledger row per uid. torch and open_clip load only inside the stage.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any

from pipeline import reasons as R
from pipeline.config import ConfigError, EmbedConfig, PipelineConfig
from pipeline.errors import UserError
from pipeline.runs import MARKER, Run, StageResult, config_hash

log = logging.getLogger(__name__)
STAGE = "embed"
PRECOMPUTED_ROWS_PER_SHARD = 100_000
RESULT_DDL = "shard_names string, shards_written long, images_embedded long, samples_not_embedded long, seconds double, device string, shard_errors string"


class PrecomputedError(UserError):
    """A precomputed embedding file that cannot be used as given (wrong key, lengths, shape)."""


# --------------------------------------------------------------------------- input layout


def resolve_images(run: Run, input_path: str, cfg: EmbedConfig) -> tuple[str | None, str, str, list]:
    """(download data path or None, shards folder, layout, shards) for the embed input."""
    from pipeline.imageshards import ImageInputError, discover_shards

    path = input_path.rstrip("/")
    stage = None
    if run.fs.exists(f"{path}/download/{MARKER}"):
        stage = f"{path}/download"
    elif run.fs.exists(f"{path}/{MARKER}") and run.fs.exists(f"{path}/shards"):
        stage = path
    elif run.fs.exists(f"{path}/download"):
        raise ImageInputError(f"embed: {path}/download is incomplete (no {MARKER}); rerun the download stage")
    if stage is None:
        layout, shards = discover_shards(path, cfg.images_per_shard)
        return None, path, layout, shards
    shards_dir = f"{stage}/shards"
    if not run.fs.exists(shards_dir) or not run.fs.list(shards_dir):
        return f"{stage}/data", shards_dir, "none", []  # nothing downloaded: every uid is no_image
    try:
        layout, shards = discover_shards(shards_dir, cfg.images_per_shard)
    except ImageInputError:
        layout, shards = "none", []
    return f"{stage}/data", shards_dir, layout, shards


def shard_fingerprint(cfg: EmbedConfig, seed: int, device: str) -> str:
    """What makes a shard's embeddings: model, weights, preprocessing, precision (not batch size)."""
    from pipeline.embed_kernel import resolve_precision

    ckpt = None
    if cfg.checkpoint and os.path.isfile(cfg.checkpoint):
        st = os.stat(cfg.checkpoint)
        ckpt = [os.path.abspath(cfg.checkpoint), st.st_size, st.st_mtime_ns]
    return config_hash(
        {
            "model": cfg.model,
            "pretrained": cfg.pretrained,
            "checkpoint": ckpt,
            "seed": seed if not (cfg.pretrained or cfg.checkpoint) else None,
            "precision": resolve_precision(cfg.precision, device),
            "draft": cfg.draft,
            "max_image_pixels": cfg.max_image_pixels,
            "text": cfg.text,
        }
    )


# --------------------------------------------------------------------------- Spark executor path

_ENCODERS: dict[tuple, Any] = {}


def task_device(requested: str) -> str:
    """The GPU Spark assigned to this task (`TaskContext.resources()['gpu']`), else the configured device.

    In local mode no resources are scheduled (asking for GPUs there makes jobs hang), so the
    device is picked directly.
    """
    from pyspark import TaskContext

    from pipeline.embed_kernel import resolve_device

    ctx = TaskContext.get()
    resources = ctx.resources() if ctx is not None else {}
    if "gpu" in resources and resources["gpu"].addresses:
        return f"cuda:{resources['gpu'].addresses[0]}"
    return resolve_device(requested)


def embed_partition(cfg: EmbedConfig, seed: int, out_dir: str, fingerprints: dict[str, str]):
    """A mapInPandas function over a frame of shard descriptions (`shard` JSON): embeds each into `out_dir`.

    The model is built once per Python worker process and device, and kept for later tasks.
    """

    def run(batches):
        import json

        import pandas as pd

        from pipeline.embed_kernel import embed_shards, load_encoder
        from pipeline.imageshards import Shard

        shards = [Shard.from_json(x) for batch in batches for x in batch["shard"]]
        if not shards:
            return
        device = task_device(cfg.device)
        key = (cfg.model, cfg.pretrained, cfg.checkpoint, seed, device, cfg.precision)
        if key not in _ENCODERS:
            _ENCODERS[key] = load_encoder(cfg, device, seed)
        summary = embed_shards(shards, out_dir, _ENCODERS[key], cfg, fingerprints, progress=False)
        yield pd.DataFrame(
            [
                {
                    "shard_names": ",".join(s.name for s in shards),
                    "shards_written": summary["shards_written"],
                    "images_embedded": summary["images_embedded"],
                    "samples_not_embedded": summary["samples_not_embedded"],
                    "seconds": summary["seconds"],
                    "device": device,
                    "shard_errors": json.dumps(summary["shard_errors"]),
                }
            ]
        )

    return run


def embed_on_spark(spark, shards: list, out_dir: str, cfg: EmbedConfig, seed: int, fingerprints: dict[str, str]) -> dict[str, Any]:
    """One Spark task per shard; on a GPU-scheduled cluster each task holds one GPU."""
    import json

    rdd = spark.sparkContext.parallelize([(s.to_json(),) for s in shards], len(shards))
    rows = spark.createDataFrame(rdd, "shard string").mapInPandas(embed_partition(cfg, seed, out_dir, fingerprints), RESULT_DDL).collect()
    images = sum(r["images_embedded"] for r in rows)
    busy = sum(r["seconds"] for r in rows)
    return {
        "shards_written": sum(r["shards_written"] for r in rows),
        "images_embedded": images,
        "samples_not_embedded": sum(r["samples_not_embedded"] for r in rows),
        "task_seconds": round(busy, 3),
        "images_per_s_per_task": round(images / busy, 2) if images and busy else None,
        "devices": sorted({r["device"] for r in rows}),
        "shard_errors": {k: v for r in rows for k, v in json.loads(r["shard_errors"]).items()},
    }


# --------------------------------------------------------------------------- precomputed embeddings


def write_precomputed(path: str, cfg: EmbedConfig, out_dir: str, fingerprint: str) -> dict[str, Any]:
    """DataComp `.npz` (key `cfg.npz_key`, its `_txt` partner as text) or `.npy` + a row-aligned uid Parquet.

    Vectors are L2-normalised to float32; NaN, inf or zero rows become `invalid_embedding`.
    """
    import numpy as np
    import pyarrow.parquet as pq

    from pipeline.embed_kernel import write_shard

    if not cfg.uids:
        raise PrecomputedError(f"embed: {path} needs --uids PARQUET (a uid column, one row per embedding row)")
    for f in (path, cfg.uids):
        if not os.path.isfile(f):
            raise PrecomputedError(f"embed: file not found: {f}")
    schema = pq.read_schema(cfg.uids)
    if "uid" not in schema.names:
        raise PrecomputedError(f"embed: {cfg.uids} has no uid column; columns: {', '.join(schema.names)}")
    table = pq.read_table(cfg.uids, columns=[c for c in ("uid", "text") if c in schema.names])
    uids = [str(u) if u is not None else None for u in table.column("uid").to_pylist()]
    texts = table.column("text").to_pylist() if "text" in table.column_names else [None] * len(uids)
    txt = None
    try:
        if path.endswith(".npz"):
            npz = np.load(path, allow_pickle=False)
            if cfg.npz_key not in npz.files:
                raise PrecomputedError(f"embed: {path} has no key {cfg.npz_key!r}; keys: {', '.join(npz.files)} (choose with --npz-key)")
            img = npz[cfg.npz_key]
            partner = cfg.npz_key[: -len("_img")] + "_txt" if cfg.npz_key.endswith("_img") else None
            txt = npz[partner] if partner in npz.files else None
        else:
            img = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise PrecomputedError(f"embed: cannot read {path}: {exc}".splitlines()[0]) from None
    if img.ndim != 2:
        raise PrecomputedError(f"embed: {path}: expected a 2-D (rows, dim) array, got shape {img.shape}")
    if len(img) != len(uids) or (txt is not None and txt.shape != img.shape):
        raise PrecomputedError(
            f"embed: {path} has {len(img)} rows but {cfg.uids} has {len(uids)} uids; they must line up row by row"
        )

    def unit(block) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(block, dtype=np.float32)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        ok = np.isfinite(x).all(axis=1) & (norm[:, 0] > 0)
        with np.errstate(invalid="ignore"):  # NaN/inf rows: computed, then replaced by zeros
            return np.where(ok[:, None], x / np.where(norm > 0, norm, 1), 0).astype(np.float32), ok

    n, dim = img.shape
    meta = {"fingerprint": fingerprint, "dim": int(dim), "dtype": "float32", "weights": f"precomputed:{os.path.basename(path)}"}
    for i, start in enumerate(range(0, max(n, 1), PRECOMPUTED_ROWS_PER_SHARD)):
        stop = min(n, start + PRECOMPUTED_ROWS_PER_SHARD)
        image, ok = unit(img[start:stop])
        text_vec, text_ok = unit(txt[start:stop]) if txt is not None else (np.zeros_like(image), np.zeros(len(image), bool))
        bad = [None if good else R.INVALID_EMBEDDING for good in ok]
        write_shard(
            out_dir,
            f"precomputed-{i:05d}",
            {
                "uid": [u if u is not None else f"row-{start + j}" for j, u in enumerate(uids[start:stop])],
                "key": [str(start + j) for j in range(stop - start)],
                "text": texts[start:stop],
                "image": image,
                "image_ok": ok,
                "txt": text_vec,
                "txt_ok": text_ok & ok,
                "reason": bad,
                "detail": [None if good else f"row {start + j} of {os.path.basename(path)} is NaN, inf or zero" for j, good in enumerate(ok)],
            },
            meta,
        )
    return {"dim": int(dim), "rows": n, "source_dtype": str(img.dtype), "npz_key": cfg.npz_key if path.endswith(".npz") else None, "text_from": "npz" if txt is not None else None}


# --------------------------------------------------------------------------- the stage


def decided_frame(spark, shards_dir: str, download_data: str | None, detail_dir: str):
    """Shard rows (+ `no_image` rows for listed uids with no sample) with `_reason`/`_detail`; (frame, extra stats)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from pipeline.contracts import require_columns
    from pipeline.embed_kernel import SHARD_DDL
    from pipeline.imageshards import list_files

    has_files = any(f.endswith(".parquet") for f in list_files(shards_dir))
    rows = spark.read.parquet(shards_dir) if has_files else spark.createDataFrame([], SHARD_DDL)
    rows = rows.withColumn("_dup", F.row_number().over(Window.partitionBy("uid").orderBy("shard", "position")) - 1)
    extra: dict[str, Any] = {}
    if download_data is None:
        dup = F.col("_dup") > 0
        decided = rows.select(
            F.when(dup, F.concat("uid", F.lit("#dup"), F.col("_dup").cast("string"))).otherwise(F.col("uid")).alias("uid"),
            "image_embedding", "text_embedding", "text",
            F.when(dup, F.lit(R.DUPLICATE_UID)).otherwise(F.col("reason")).alias("_reason"),
            F.when(dup, F.concat(F.lit("uid already seen; this copy is key "), F.col("key"), F.lit(" in shard "), F.col("shard")))
            .otherwise(F.col("detail")).alias("_detail"),
        )
        return decided, extra
    listed = spark.read.parquet(download_data)
    require_columns(listed, ["uid"], "embed (download data)")
    listed = listed.select("uid", (F.col("text") if "text" in listed.columns else F.lit(None).cast("string")).alias("_listed_text"))
    first = rows.where("_dup = 0")
    missing = F.col("shard").isNull()
    decided = listed.join(first, on="uid", how="left").select(
        "uid", "image_embedding", "text_embedding",
        F.coalesce(F.col("text"), F.col("_listed_text")).alias("text"),
        F.when(missing, F.lit(R.NO_IMAGE)).otherwise(F.col("reason")).alias("_reason"),
        F.when(missing, F.lit(f"no sample with this uid in {detail_dir}")).otherwise(F.col("detail")).alias("_detail"),
    )
    extra["samples_not_in_download_data"] = rows.join(listed, on="uid", how="left_anti").count()
    return decided, extra


def run_embed(spark, input_path: str, run_root: str, cfg: PipelineConfig, force: bool = False) -> StageResult:
    """Embed the images of `input_path` into `<run_root>/embed`; `.npz`/`.npy` inputs are precomputed embeddings."""
    from pipeline.contracts import select_contract

    e = cfg.embed
    if e.checkpoint is not None and not os.path.isfile(e.checkpoint):
        from pipeline.embed_kernel import EmbedError

        raise EmbedError(f"embed: checkpoint not found: {e.checkpoint}")
    run = Run(spark, run_root)
    out_dir = f"{run.stage_dir(STAGE)}/shards"
    precomputed = input_path.endswith((".npz", ".npy"))
    _restore_parked(run, out_dir)
    if precomputed:
        download_data, layout, shards, device = None, "npz" if input_path.endswith(".npz") else "npy", [], "none"
        st = os.stat(input_path) if os.path.isfile(input_path) else None
        shard_fp = config_hash({"precomputed": os.path.abspath(input_path), "uids": e.uids, "key": e.npz_key, "stat": [st.st_size, st.st_mtime_ns] if st else None})
        fingerprint = config_hash({"input": shard_fp})
    else:
        from pipeline.embed_kernel import resolve_device

        download_data, shards_dir, layout, shards = resolve_images(run, input_path, e)
        device = resolve_device(e.device)
        from pipeline.imageshards import source_identity

        # Per shard: what makes its embeddings and the identity of its input bytes (size, mtime),
        # so a re-downloaded shard is embedded again and an unchanged one is reused.
        model_fp = shard_fingerprint(e, cfg.seed, device)
        shard_fps = {s.name: config_hash([model_fp, source_identity(s)]) for s in shards}
        # The download stage's marker changes whenever it recommits (e.g. --retry-failed).
        listed = run.fs.read_json(f"{download_data[: -len('/data')]}/{MARKER}") if download_data else None
        fingerprint = config_hash(
            {"input": run.fs.qualify(shards_dir), "shards": shard_fps, "download": download_data, "download_marker": listed}
        )
    written = set(run.fs.list(out_dir))
    if not force and run.is_complete(STAGE, fingerprint) and all(f"{s.name}.parquet" in written for s in shards):
        log.info("embed: complete with the same input, model and shards; skipping")
        return StageResult(STAGE, run.stage_dir(STAGE), run.stats(STAGE), skipped=True)
    if force or precomputed:
        run.fs.delete(out_dir)
    started = time.time()
    extra: dict[str, Any] = {"input": input_path, "layout": layout, "shards": len(shards), "dtype": "float32"}
    if precomputed:
        extra.update(write_precomputed(input_path, e, out_dir, shard_fp))
        extra.update({"model": None, "device": None, "precision": None})
        detail_dir = input_path
    else:
        from pipeline.embed_kernel import embed_shards, load_encoder, shard_done

        pending = [s for s in shards if not shard_done(out_dir, s, shard_fps[s.name])]
        log.info("embed: %d shards, %d to embed, %d already done (%s)", len(shards), len(pending), len(shards) - len(pending), layout)
        summary: dict[str, Any] = {"shards_written": 0, "images_embedded": 0, "images_per_s": None, "shard_errors": {}}
        encoder = None
        if pending and e.executor == "spark":
            summary = embed_on_spark(spark, pending, out_dir, e, cfg.seed, shard_fps)
        elif pending:
            encoder = load_encoder(e, device, cfg.seed)
            summary = embed_shards(pending, out_dir, encoder, e, shard_fps)
        extra.update(
            {
                "model": e.model, "pretrained": e.pretrained, "checkpoint": e.checkpoint,
                "weights": "pretrained" if e.pretrained else "checkpoint" if e.checkpoint else "random",
                "device": device if e.executor == "driver" else summary.get("devices"),
                "precision": encoder.precision if encoder else None,
                "executor": e.executor, "batch_size": e.batch_size, "workers": e.workers,
                "dim": encoder.dim if encoder else _dim_from_shards(out_dir, shards),
                "shards_reused": len(shards) - len(pending),
                **{k: v for k, v in summary.items() if k != "seconds"},
                "embed_seconds": summary.get("seconds"),
            }
        )
        detail_dir = shards_dir
        if extra["precision"] is None and e.executor == "driver":
            from pipeline.embed_kernel import resolve_precision

            extra["precision"] = resolve_precision(e.precision, device)
    parked = f"{run.root}/_tmp/embed-shards-{int(time.time() * 1000)}"
    if run.fs.exists(out_dir):
        run.fs.rename(out_dir, parked)
    else:
        run.fs.mkdirs(parked)
    try:
        decided, more = decided_frame(spark, parked, download_data, detail_dir)
        extra.update(more)
        result = run.commit(
            STAGE, decided, fingerprint, shape=lambda kept: select_contract(kept, "embed"), extra_stats=extra, started=started
        )
    finally:
        if run.fs.exists(parked):
            run.fs.rename(parked, out_dir)
    return result


def _restore_parked(run: Run, out_dir: str) -> None:
    """A crash during commit leaves the shards parked in `_tmp/`: move the newest back."""
    parked = sorted(n for n in run.fs.list(f"{run.root}/_tmp") if n.startswith("embed-shards-"))
    if parked and not run.fs.exists(out_dir):
        run.fs.rename(f"{run.root}/_tmp/{parked[-1]}", out_dir)
        log.info("embed: recovered finished shards from %s", parked[-1])


def _dim_from_shards(out_dir: str, shards: list) -> int | None:
    import json

    import pyarrow.parquet as pq

    from pipeline.embed_kernel import META_KEY, output_path
    from pipeline.imageshards import _fs

    for s in shards:
        fs, path = _fs(output_path(out_dir, s))
        try:
            with fs.open_input_file(path) as fh:
                return json.loads((pq.ParquetFile(fh).schema_arrow.metadata or {})[META_KEY])["dim"]
        except (OSError, KeyError, ValueError):
            continue
    return None


# --------------------------------------------------------------------------- command line


def add_cli(subparsers: Any) -> None:
    """Register `embed` on the `curate` command's subparsers."""
    from pipeline.cli import _common

    p = subparsers.add_parser("embed", help="open_clip image and text embeddings of downloaded images (or precomputed ones)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", metavar="DIR", help="a run folder (its download stage), an img2dataset output folder or a folder of images")
    source.add_argument("--npz", metavar="FILE", help="precomputed DataComp .npz embeddings (with --uids)")
    source.add_argument("--npy", metavar="FILE", help="precomputed (rows, dim) .npy embeddings (with --uids)")
    p.add_argument("--uids", metavar="PARQUET", help="uid Parquet, row-aligned with --npz/--npy")
    p.add_argument("--npz-key", help="the .npz array to use (DataComp: l14_img (default) or b32_img)")
    p.add_argument("--output", required=True, help="the run folder")
    p.add_argument("--model", help="open_clip model name (default ViT-B-32; tiny-clip for tests)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", metavar="TAG", help="open_clip pretrained tag (downloads from the hub where reachable)")
    weights.add_argument("--checkpoint", metavar="PATH", help="a local checkpoint file (loaded with weights_only=True)")
    p.add_argument("--batch-size", type=int, help="images per model batch (default 256)")
    p.add_argument("--device", help="auto (default: cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), help="autocast precision (auto: fp16 on GPU, fp32 on CPU)")
    p.add_argument("--workers", type=int, help="image decode processes (default 2; 0 = in the main process)")
    p.add_argument("--executor", choices=("driver", "spark"), help="embed on the driver (default) or one Spark task per shard")
    p.add_argument("--force", action="store_true", help="redo every shard and the stage")
    _common(p)
    p.set_defaults(func=cmd_embed)


def cmd_embed(args: argparse.Namespace) -> int:
    """`curate embed`: the same function as `run_embed`."""
    from pipeline.cli import _stage

    if (args.npz or args.npy) and not args.uids:
        raise ConfigError("embed: --npz/--npy need --uids PARQUET")
    overrides = {
        "embed.model": args.model,
        "embed.pretrained": args.pretrained,
        "embed.checkpoint": args.checkpoint,
        "embed.batch_size": args.batch_size,
        "embed.device": args.device,
        "embed.precision": args.precision,
        "embed.workers": args.workers,
        "embed.executor": args.executor,
        "embed.uids": args.uids,
        "embed.npz_key": args.npz_key,
    }
    return _stage(args, overrides, run_embed, args.input or args.npz or args.npy)
