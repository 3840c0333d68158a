"""The CLIP batch encoder and the per-shard embedding loop: plain torch, no Spark.

Worker processes (a torch DataLoader) read and decode slices of shards ("chunks") and
tokenize their captions while the main process runs the model on the previous chunks; the
main process writes one Parquet file per input shard as soon as all its chunks are in, in
place: a half-written shard has no footer, so it never counts as done (`shard_done`).
Both the driver path and the Spark executor path (`pipeline.stages.embed.embed_partition`) call
`embed_shards`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset

from pipeline.core import reasons as R
from pipeline.core.errors import UserError
from pipeline.kernels.imageio import ImageDecodeError, PreprocessSpec, load_image, normalize
from pipeline.kernels.imageshards import Shard, _fs, read_unit, shard_units

# The embed stage's config (pipeline.stages.embed.EmbedConfig) is passed in; a kernel does not
# import stages, so it is typed by the fields it reads.
EmbedConfig = Any

log = logging.getLogger(__name__)
MODEL_CONFIGS = Path(__file__).resolve().parent / "model_configs"
META_KEY = b"curate.embed"
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class EmbedError(UserError):
    """The model cannot be built or loaded as asked (unknown name, missing checkpoint, no weights)."""


def vector_type() -> pa.DataType:
    """list<float32> with non-null elements: Spark reads it as array<float> (containsNull=false)."""
    return pa.list_(pa.field("element", pa.float32(), nullable=False))


SHARD_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("key", pa.string()),
        pa.field("text", pa.string()),
        pa.field("image_embedding", vector_type()),
        pa.field("text_embedding", vector_type()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
    ]
)
SHARD_DDL = (
    "uid string, key string, text string, image_embedding array<float>, text_embedding array<float>, "
    "reason string, detail string, shard string, position int"
)


# --------------------------------------------------------------------------- device and model


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise EmbedError(f"embed: device {requested!r} asked for but CUDA is not available here; use --device cpu or auto")
    return requested


def resolve_precision(requested: str, device: str) -> str:
    if requested == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    return requested


def register_model_configs() -> None:
    """Make the project's model configs (tiny-clip, for tests and the demo) known to open_clip."""
    import open_clip

    folder = model_config_dir()
    if not any(Path(p) == folder for p in getattr(open_clip.factory, "_MODEL_CONFIG_PATHS", [])):
        open_clip.add_model_config(folder)


@lru_cache(maxsize=1)
def model_config_dir() -> Path:
    """The folder of the project's model configs. open_clip reads configs from a folder, so when
    the package runs from a zip (spark-submit --py-files) they are copied to a temporary one."""
    if MODEL_CONFIGS.is_dir():
        return MODEL_CONFIGS
    from importlib import resources

    out = Path(tempfile.mkdtemp(prefix="curate-model-configs-"))
    for entry in resources.files("pipeline.kernels").joinpath("model_configs").iterdir():
        if entry.name.endswith(".json"):
            (out / entry.name).write_bytes(entry.read_bytes())
    return out


@dataclass
class Encoder:
    """An open_clip model on a device with its tokenizer and input spec; returns L2-normalised float32."""

    model: Any
    tokenizer: Any
    spec: PreprocessSpec
    device: str
    precision: str
    dim: int
    weights: str  # "pretrained:<tag>", "checkpoint:<path>" or "random"

    def _autocast(self):
        if self.precision in _DTYPES:
            return torch.autocast(device_type=torch.device(self.device).type, dtype=_DTYPES[self.precision])
        return nullcontext()

    # Both return float32 unit vectors left on the device: on a GPU the call returns at once and
    # the loop fetches the next batch while the model runs; results are copied back per shard.
    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) pixels from the loader -> (B, dim) unit vectors."""
        x = normalize(pixels, self.spec, self.device)
        with self._autocast():
            features = self.model.encode_image(x)
        return torch.nn.functional.normalize(features.float(), dim=-1)

    @torch.inference_mode()
    def encode_texts(self, tokens: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            features = self.model.encode_text(tokens.to(self.device, non_blocking=True))
        return torch.nn.functional.normalize(features.float(), dim=-1)


def load_encoder(cfg: EmbedConfig, device: str, seed: int = 0) -> Encoder:
    """Build `cfg.model` with open_clip on `device`: `--pretrained` tag, `--checkpoint` file, or random weights.

    Checkpoints go through open_clip's loader, which calls torch.load with weights_only=True.
    Random weights come from a seeded generator, so two runs build the same model.
    """
    import open_clip

    register_model_configs()
    name = cfg.model
    if ":" not in name and name not in open_clip.list_models():
        raise EmbedError(f"embed: unknown model {name!r}; open_clip knows {len(open_clip.list_models())} (open_clip.list_models()), plus tiny-clip")
    if cfg.checkpoint is not None and not os.path.isfile(cfg.checkpoint):
        raise EmbedError(f"embed: checkpoint not found: {cfg.checkpoint}")
    weights = cfg.checkpoint or cfg.pretrained
    if weights is None:
        log.warning(
            "embed: no --pretrained tag or --checkpoint given: %s has RANDOM weights (seed %d); "
            "its embeddings carry no meaning (fine for tests and the demo, not for curation)", name, seed,
        )
    try:
        with torch.random.fork_rng(devices=[]), _quiet_root_logger():
            torch.manual_seed(seed)
            model, _, _ = open_clip.create_model_and_transforms(name, pretrained=weights, device=device, weights_only=True)
    except EmbedError:
        raise
    except Exception as exc:  # open_clip raises RuntimeError/ValueError/OSError with long messages
        what = f"checkpoint {cfg.checkpoint}" if cfg.checkpoint else f"pretrained weights {cfg.pretrained!r}"
        first = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        hint = "" if cfg.checkpoint else " (no network here? download elsewhere and pass --checkpoint PATH)"
        raise EmbedError(f"embed: could not load {what} for {name}: {first}{hint}") from None
    model.eval()
    spec = PreprocessSpec.from_model(model)
    try:
        spec.validate()
    except ValueError as exc:
        raise EmbedError(f"embed: {name}: {exc}") from None
    precision = resolve_precision(cfg.precision, device)
    dim = int(getattr(model, "embed_dim", 0) or model.text_projection.shape[1])
    label = f"checkpoint:{cfg.checkpoint}" if cfg.checkpoint else (f"pretrained:{cfg.pretrained}" if cfg.pretrained else "random")
    with _quiet_root_logger():
        tokenizer = open_clip.get_tokenizer(name)
    return Encoder(model, tokenizer, spec, device, precision, dim, label)


@contextmanager
def _quiet_root_logger():
    """open_clip logs each build step at INFO on the root logger; keep its warnings only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


# --------------------------------------------------------------------------- worker side


class ShardChunks(IterableDataset):
    """Chunks (at most `batch_size` samples of one shard), decoded and tokenized in DataLoader workers.

    A shard is cut into units (`shard_units`: a batch of a tar or file group, a Parquet row
    group); unit u of shard s goes to worker (s + u) mod n_workers, so one big shard still
    spreads over every worker. Each chunk says how many chunks its shard has, so the consumer
    knows when a shard is complete whatever order chunks arrive in.
    """

    def __init__(self, shards: list[Shard], batch_size: int, spec: PreprocessSpec, tokenizer, cfg: EmbedConfig) -> None:
        self.shards, self.batch_size, self.spec, self.tokenizer = shards, batch_size, spec, tokenizer
        self.max_pixels, self.draft, self.text = cfg.max_image_pixels, cfg.draft, cfg.text

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for s, shard in enumerate(self.shards):
            try:
                units, error = shard_units(shard, self.batch_size)
            except Exception as exc:  # noqa: BLE001 - an unreadable shard is reported, not fatal
                units, error = [], f"{type(exc).__name__}: {exc}"
            counts = [math.ceil((b - a) / self.batch_size) for a, b in units]
            n_chunks = max(1, sum(counts))
            if not units and s % workers == worker:
                yield self.chunk(s, 0, n_chunks, [], error)
            offset = 0
            for u, ((a, b), count) in enumerate(zip(units, counts, strict=True)):
                if (s + u) % workers == worker:
                    yield from self.unit(s, shard, a, b, offset, count, n_chunks, error)
                offset += count

    def unit(self, s: int, shard: Shard, a: int, b: int, offset: int, count: int, n_chunks: int, error: str | None):
        """Chunks offset .. offset+count-1: a read error mid-unit still yields them all (empty)."""
        j, buffer = offset, []
        try:
            for samples in read_unit(shard, a, b, self.batch_size):
                buffer += samples
                while len(buffer) >= self.batch_size and j < offset + count:
                    yield self.chunk(s, j, n_chunks, buffer[: self.batch_size], error)
                    buffer, j = buffer[self.batch_size :], j + 1
        except Exception as exc:  # noqa: BLE001
            error = f"{type(exc).__name__}: {exc}"
        while j < offset + count:
            yield self.chunk(s, j, n_chunks, buffer, error)
            buffer, j = [], j + 1

    def chunk(self, s: int, j: int, n_chunks: int, samples: list, error: str | None) -> dict:
        out: dict[str, Any] = {"shard": s, "chunk": j, "n_chunks": n_chunks, "shard_error": error}
        pixels, ok, reasons, details, token_rows = [], [], [], [], []
        for i, sample in enumerate(samples):
            reason = detail = None
            if sample.data is None:
                reason, detail = R.NO_IMAGE, sample.note
            else:
                try:
                    pixels.append(load_image(sample.data, self.spec, self.max_pixels, self.draft))
                    ok.append(i)
                    if self.text and sample.text:
                        token_rows.append(i)
                except ImageDecodeError as exc:
                    reason, detail = R.IMAGE_DECODE_FAILED, str(exc)
            reasons.append(reason)
            details.append(detail)
        size = self.spec.size
        out.update(
            uids=[x.uid for x in samples],
            keys=[x.key for x in samples],
            texts=[x.text for x in samples],
            reasons=reasons,
            details=details,
            ok=ok,
            pixels=torch.from_numpy(np.stack(pixels)) if pixels else torch.empty((0, size, size, 3), dtype=torch.uint8),
            token_rows=token_rows,
            tokens=self.tokenizer([samples[i].text for i in token_rows]) if token_rows else None,
        )
        return out


# --------------------------------------------------------------------------- writing shards


def output_path(out_dir: str, shard: Shard) -> str:
    return f"{out_dir.rstrip('/')}/{shard.name}.parquet"


def shard_done(out_dir: str, shard: Shard, fingerprint: str) -> bool:
    """A shard counts as done only when its final file exists and was made with this fingerprint."""
    fs, path = _fs(output_path(out_dir, shard))
    try:
        with fs.open_input_file(path) as fh:
            meta = pq.ParquetFile(fh).schema_arrow.metadata or {}
    except (FileNotFoundError, OSError, pa.ArrowInvalid):
        return False
    try:
        return json.loads(meta.get(META_KEY, b"{}")).get("fingerprint") == fingerprint
    except ValueError:
        return False


def vectors(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    """(n, dim) float32 rows -> list<float32> array, null where `valid` is False."""
    n, dim = values.shape
    counts = np.where(valid, dim, 0)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    flat = values[valid].reshape(-1).astype(np.float32, copy=False)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat), type=vector_type(), mask=pa.array(~valid))


def write_shard(out_dir: str, name: str, rows: dict[str, Any], meta: dict[str, Any]) -> str:
    """Write one shard's rows to `<out_dir>/<name>.parquet`, in place.

    A shard cut short has no Parquet footer, and `shard_done` (which reads the footer's
    fingerprint) sends it back to work; the stage reads the folder only after every shard is done.
    """
    n = len(rows["uid"])
    table = pa.table(
        {
            "uid": pa.array(rows["uid"], pa.string()),
            "key": pa.array(rows["key"], pa.string()),
            "text": pa.array(rows["text"], pa.string()),
            "image_embedding": vectors(rows["image"], rows["image_ok"]),
            "text_embedding": vectors(rows["txt"], rows["txt_ok"]),
            "reason": pa.array(rows["reason"], pa.string()),
            "detail": pa.array(rows["detail"], pa.string()),
            "shard": pa.array([name] * n, pa.string()),
            "position": pa.array(np.arange(n, dtype=np.int32)),
        },
        schema=SHARD_SCHEMA.with_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()}),
    )
    fs, final = _fs(f"{out_dir.rstrip('/')}/{name}.parquet")
    fs.create_dir(os.path.dirname(final), recursive=True)
    pq.write_table(table, final, filesystem=fs, compression="zstd")
    return final


@dataclass
class _Pending:
    name: str
    n_chunks: int
    chunks: dict[int, dict]
    error: str | None = None


def embed_shards(
    shards: list[Shard], out_dir: str, encoder: Encoder, cfg: EmbedConfig, fingerprints: dict[str, str], progress: bool = True
) -> dict[str, Any]:
    """Embed every shard into `<out_dir>/<shard>.parquet`; returns counts, shard errors and images/s.

    `fingerprints[shard.name]` (model, weights, loader settings and the input file's identity)
    is stored in the file's metadata; `shard_done` compares it on the next run.

    Shard rows: uid, key, text, image_embedding, text_embedding (null when there is no caption),
    reason/detail (null for embedded samples; image_decode_failed or no_image otherwise).
    """
    meta = {"dim": encoder.dim, "dtype": "float32", "weights": encoder.weights}
    dataset = ShardChunks(shards, cfg.batch_size, encoder.spec, encoder.tokenizer, cfg)
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=cfg.workers,
        pin_memory=encoder.device.startswith("cuda"),
        prefetch_factor=4 if cfg.workers else None,
        # Fresh interpreters, not forks: a forked child inherits the driver's py4j socket to
        # the JVM, and anything it sends there corrupts the session.
        multiprocessing_context="spawn" if cfg.workers else None,
    )
    threads = torch.get_num_threads()
    if encoder.device == "cpu" and cfg.workers:
        # The decode workers need their cores; more model threads than cores left only thrash.
        torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) - cfg.workers)))
    try:
        return _embed_loop(shards, out_dir, encoder, loader, meta, fingerprints, progress)
    finally:
        torch.set_num_threads(threads)


def _embed_loop(
    shards: list[Shard], out_dir: str, encoder: Encoder, loader, meta: dict, fingerprints: dict[str, str], progress: bool
) -> dict[str, Any]:
    from tqdm import tqdm

    pending: dict[int, _Pending] = {}
    images = failed = written = 0
    errors: dict[str, str] = {}
    started = time.time()
    bar = tqdm(unit="img", desc="embed", disable=None if progress else True, smoothing=0.1)
    first_at, first_images, last_at = None, 0, None
    for item in loader:
        if first_at is None:
            # Worker start-up (fresh interpreters importing torch) ends here; rates after it are steady-state.
            first_at, first_images = time.time(), len(item["ok"])
        s = item["shard"]
        p = pending.setdefault(s, _Pending(shards[s].name, item["n_chunks"], {}))
        item["image"] = encoder.encode_images(item["pixels"]) if item["ok"] else None
        item["txt"] = encoder.encode_texts(item["tokens"]) if item["token_rows"] else None
        item["pixels"] = item["tokens"] = None
        p.chunks[item["chunk"]] = item
        p.error = p.error or item["shard_error"]
        images += len(item["ok"])
        failed += len(item["uids"]) - len(item["ok"])
        bar.update(len(item["uids"]))
        if len(p.chunks) == p.n_chunks:
            del pending[s]
            if p.error and not any(c["uids"] for c in p.chunks.values()):
                # Nothing readable at all: leave the shard undone, so a rerun tries it again.
                errors[p.name] = p.error
                log.warning("embed: shard %s unreadable, not written: %s", p.name, p.error)
                continue
            if p.error:
                errors[p.name] = p.error
                log.warning("embed: shard %s partly readable: %s", p.name, p.error)
            write_shard(out_dir, p.name, _assemble(p, encoder.dim), {**meta, "fingerprint": fingerprints[p.name], "shard_error": p.error})
            written += 1
        last_at = time.time()
    # The loop ends once the decode workers have exited (a second or more of interpreter
    # shutdown): a fixed cost per run like their start-up, kept out of the steady rate.
    bar.close()
    seconds = time.time() - started
    steady = last_at - first_at if first_at else 0.0
    return {
        "shards_written": written,
        "images_embedded": images,
        "samples_not_embedded": failed,
        "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 2) if images and seconds > 0 else None,
        "startup_seconds": round(first_at - started, 3) if first_at else None,
        "shutdown_seconds": round(time.time() - last_at, 3) if last_at else None,
        "images_per_s_after_startup": round((images - first_images) / steady, 2) if steady > 0 and images > first_images else None,
        "shard_errors": errors,
    }


def _assemble(p: _Pending, dim: int) -> dict[str, Any]:
    cols: dict[str, list] = {k: [] for k in ("uid", "key", "text", "reason", "detail")}
    image_parts, image_ok, txt_parts, txt_ok = [], [], [], []
    for j in sorted(p.chunks):
        c = p.chunks[j]
        n = len(c["uids"])
        cols["uid"] += c["uids"]
        cols["key"] += c["keys"]
        cols["text"] += c["texts"]
        cols["reason"] += c["reasons"]
        cols["detail"] += c["details"]
        img, ok = np.zeros((n, dim), np.float32), np.zeros(n, bool)
        if c["image"] is not None:
            img[c["ok"]], ok[c["ok"]] = c["image"].cpu().numpy(), True
        txt, tok = np.zeros((n, dim), np.float32), np.zeros(n, bool)
        if c["txt"] is not None:
            txt[c["token_rows"]], tok[c["token_rows"]] = c["txt"].cpu().numpy(), True
        image_parts.append(img)
        image_ok.append(ok)
        txt_parts.append(txt)
        txt_ok.append(tok)

    return {
        **cols,
        "image": np.concatenate(image_parts),
        "image_ok": np.concatenate(image_ok),
        "txt": np.concatenate(txt_parts),
        "txt_ok": np.concatenate(txt_ok),
    }
