"""The embed stage: open_clip image and text embeddings per input shard, or precomputed ones.

Reads a run folder whose download stage is complete, an img2dataset output folder (WebDataset
tars or Parquet with image bytes) or a folder of image files; writes `<run>/embed/shards/
<shard>.parquet` per input shard (resumable: a finished shard is skipped on rerun) and
commits `<run>/embed/data` (uid, image_embedding, text_embedding, text; L2-normalised
float32) with one ledger row per uid. torch and open_clip load only inside the stage.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

from pipeline.core import reasons as R
from pipeline.core.config import ConfigError
from pipeline.core.errors import UserError
from pipeline.core.folder import RunFolder, config_hash
from pipeline.core.protocol import Context, Input, Output, Plan, Stage, Upstream


@dataclass(frozen=True)
class EmbedConfig:
    # An open_clip model name (tiny-clip ships with the project for tests and the demo) with a
    # pretrained tag, a local checkpoint, or neither (random weights, with a warning).
    model: str = "ViT-B-32"
    pretrained: str | None = None
    checkpoint: str | None = None
    batch_size: int = 256
    # Image decode/resize processes beside the model (0 = decode in the main process; unset: the
    # cores less one on the driver, where the model needs few threads; one per Spark task).
    workers: int | None = None
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (fp16 on GPU, fp32 on CPU) | fp32 | fp16 | bf16 (autocast)
    # Where shards are embedded: "driver" (this process, one device) or "spark" (one task per
    # shard on the executors, the GPU from the task's resources on a GPU-scheduled cluster).
    executor: str = "driver"
    # Images with more pixels are refused before decoding (Pillow's own bomb limit by default).
    max_image_pixels: int = 89_478_485
    # Decode JPEGs at reduced size (Pillow draft) when the result still covers the model input.
    draft: bool = True
    # Also embed captions (text_embedding; null when a sample has none).
    text: bool = True
    # Folders of image files are cut into pseudo-shards of this many files (the unit of resume).
    images_per_shard: int = 10000
    # Precomputed embeddings (--npz/--npy): the uid Parquet, row-aligned, and the .npz key.
    uids: str | None = None
    npz_key: str = "l14_img"

    def validate(self, where: str) -> None:
        import re

        if self.batch_size < 1:
            raise ConfigError(f"{where}.batch_size: must be >= 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"{where}.workers: must be >= 0, got {self.workers}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            raise ConfigError(f"{where}.device: {self.device!r} is not auto, cpu, cuda or cuda:N")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ConfigError(f"{where}.precision: {self.precision!r} is not one of auto, fp32, fp16, bf16")
        if self.executor not in ("driver", "spark"):
            raise ConfigError(f"{where}.executor: {self.executor!r} is not one of driver, spark")
        if self.pretrained is not None and self.checkpoint is not None:
            raise ConfigError(f"{where}: give either pretrained (an open_clip tag) or checkpoint (a file), not both")
        if self.max_image_pixels < 1:
            raise ConfigError(f"{where}.max_image_pixels: must be >= 1, got {self.max_image_pixels}")
        if self.images_per_shard < 1:
            raise ConfigError(f"{where}.images_per_shard: must be >= 1, got {self.images_per_shard}")


log = logging.getLogger(__name__)
STAGE_NAME = "embed"
PRECOMPUTED_ROWS_PER_SHARD = 100_000
RESULT_DDL = "shard_names string, shards_written long, images_embedded long, samples_not_embedded long, seconds double, device string, shard_errors string"


class PrecomputedError(UserError):
    """A precomputed embedding file that cannot be used as given (wrong key, lengths, shape)."""


# --------------------------------------------------------------------------- input layout


def resolve_images(run: RunFolder, up: Upstream, cfg: EmbedConfig) -> tuple[str | None, str, str, list]:
    """(download data path or None, shards folder, layout, shards) for the embed input."""
    from pipeline.kernels.imageshards import ImageInputError, discover_shards

    if up.stage is None:  # an img2dataset output folder or a folder of images
        layout, shards = discover_shards(up.path.rstrip("/"), cfg.images_per_shard)
        return None, up.path.rstrip("/"), layout, shards
    shards_dir = f"{up.dir}/shards"
    if not run.fs.exists(shards_dir) or not run.fs.list(shards_dir):
        return up.path, shards_dir, "none", []  # nothing downloaded: every uid is no_image
    try:
        layout, shards = discover_shards(shards_dir, cfg.images_per_shard)
    except ImageInputError:
        layout, shards = "none", []
    return up.path, shards_dir, layout, shards


def shard_fingerprint(cfg: EmbedConfig, seed: int, device: str) -> str:
    """What makes a shard's embeddings: model, weights, preprocessing, precision (not batch size)."""
    from pipeline.kernels.encoder import resolve_precision

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

    from pipeline.kernels.encoder import resolve_device

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

        from pipeline.kernels.encoder import embed_shards, load_encoder
        from pipeline.kernels.imageshards import Shard

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

    from pipeline.kernels.encoder import write_shard

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

    from pipeline.core.contracts import require_columns
    from pipeline.kernels.encoder import SHARD_DDL
    from pipeline.kernels.imageshards import list_files

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


def plan(ctx: Context) -> Plan:
    """Per shard: what makes its embeddings and the identity of its input bytes (size, mtime), so
    a re-downloaded shard is embedded again and an unchanged one is reused. Finished shards stay
    across reruns (the unit of resume) unless forced or the input is a precomputed file."""
    e: EmbedConfig = ctx.cfg
    up = ctx.input()
    if e.checkpoint is not None and not os.path.isfile(e.checkpoint):
        from pipeline.kernels.encoder import EmbedError

        raise EmbedError(f"embed: checkpoint not found: {e.checkpoint}")
    out_dir = f"{ctx.dir}/shards"
    if up.given.endswith((".npz", ".npy")):
        if not e.uids:
            raise ConfigError("embed: a precomputed .npz/.npy input needs embed.uids (--uids PARQUET)")
        st = os.stat(up.given) if os.path.isfile(up.given) else None
        shard_fp = config_hash({"precomputed": os.path.abspath(up.given), "uids": e.uids, "key": e.npz_key, "stat": [st.st_size, st.st_mtime_ns] if st else None})
        ctx.state.update(precomputed=True, shard_fp=shard_fp, download_data=None, layout="npz" if up.given.endswith(".npz") else "npy", shards=[])
        return Plan(fingerprint={"precomputed": shard_fp})
    from pipeline.kernels.encoder import resolve_device
    from pipeline.kernels.imageshards import source_identity

    download_data, shards_dir, layout, shards = resolve_images(ctx.run, up, e)
    device = resolve_device(e.device)
    model_fp = shard_fingerprint(e, ctx.seed, device)
    shard_fps = {s.name: config_hash([model_fp, source_identity(s)]) for s in shards}
    ctx.state.update(
        precomputed=False, download_data=download_data, shards_dir=shards_dir, layout=layout, shards=shards,
        device=device, shard_fps=shard_fps,
    )
    written = set(ctx.run.fs.list(out_dir))
    return Plan(
        fingerprint={"shards": shard_fps},
        redo=not all(f"{s.name}.parquet" in written for s in shards),
        keep=() if ctx.force else ("shards",),
    )


def run(ctx: Context) -> Output:
    """Embed the input's images (or take precomputed embeddings) into shards, then decide every uid."""
    from pipeline.core.contracts import select_contract

    e: EmbedConfig = ctx.cfg
    if e.workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        e = dataclasses.replace(e, workers=max(1, cores - 1) if e.executor == "driver" else 1)
    st = ctx.state
    out_dir = f"{ctx.dir}/shards"
    shards = st["shards"]
    stats: dict[str, Any] = {"input": ctx.input().given, "layout": st["layout"], "shards": len(shards), "dtype": "float32"}
    if st["precomputed"]:
        stats.update(write_precomputed(ctx.input().given, e, out_dir, st["shard_fp"]))
        stats.update({"model": None, "device": None, "precision": None})
        detail_dir = ctx.input().given
    else:
        from pipeline.kernels.encoder import (
            embed_shards,
            load_encoder,
            resolve_precision,
            shard_done,
        )

        device, shard_fps = st["device"], st["shard_fps"]
        pending = [s for s in shards if not shard_done(out_dir, s, shard_fps[s.name])]
        log.info("embed: %d shards, %d to embed, %d already done (%s)", len(shards), len(pending), len(shards) - len(pending), st["layout"])
        summary: dict[str, Any] = {"shards_written": 0, "images_embedded": 0, "images_per_s": None, "shard_errors": {}}
        encoder = None
        if pending and e.executor == "spark":
            summary = embed_on_spark(ctx.spark, pending, out_dir, e, ctx.seed, shard_fps)
        elif pending:
            encoder = load_encoder(e, device, ctx.seed)
            summary = embed_shards(pending, out_dir, encoder, e, shard_fps)
        precision = encoder.precision if encoder else resolve_precision(e.precision, device) if e.executor == "driver" else None
        stats.update(
            {
                "model": e.model, "pretrained": e.pretrained, "checkpoint": e.checkpoint,
                "weights": "pretrained" if e.pretrained else "checkpoint" if e.checkpoint else "random",
                "device": device if e.executor == "driver" else summary.get("devices"),
                "precision": precision,
                "executor": e.executor, "batch_size": e.batch_size, "workers": e.workers,
                "dim": encoder.dim if encoder else _dim_from_shards(out_dir, shards),
                "shards_reused": len(shards) - len(pending),
                **{k: v for k, v in summary.items() if k != "seconds"},
                "embed_seconds": summary.get("seconds"),
            }
        )
        detail_dir = st["shards_dir"]
    if not ctx.run.fs.exists(out_dir):
        ctx.run.fs.mkdirs(out_dir)
    decided, more = decided_frame(ctx.spark, out_dir, st["download_data"], detail_dir)
    stats.update(more)
    return Output(decided=decided, shape=lambda kept: select_contract(kept, "embed"), stats=stats)


def _dim_from_shards(out_dir: str, shards: list) -> int | None:
    import json

    import pyarrow.parquet as pq

    from pipeline.kernels.encoder import META_KEY, output_path
    from pipeline.kernels.imageshards import _fs

    for s in shards:
        fs, path = _fs(output_path(out_dir, s))
        try:
            with fs.open_input_file(path) as fh:
                return json.loads((pq.ParquetFile(fh).schema_arrow.metadata or {})[META_KEY])["dim"]
        except (OSError, KeyError, ValueError):
            continue
    return None


STAGE = Stage(
    name="embed",
    config=EmbedConfig,
    run=run,
    plan=plan,
    help="open_clip image and text embeddings of downloaded images (or precomputed ones)",
    inputs=(
        Input(
            "input", ("download",),
            "a run folder (its download stage), an img2dataset output folder, a folder of images, "
            "or precomputed embeddings: a DataComp .npz or a (rows, dim) .npy (with --uids)",
            aliases=("--npz", "--npy"),
        ),
    ),
    schemas={"data": "embed"},
    seeded=True,
    volatile=("batch_size", "workers", "executor"),
)
