"""Embedding throughput on the CPU with the tiny model: the whole per-shard loop against the model alone.

Run: .venv/bin/python bench/bench_embed_cpu.py [--images 1024] [--workers 1] [--batch-size 64]

What it measures, in one run, on the same images:

  (a) model only   `Encoder.encode_images` + `Encoder.encode_texts` on pre-made uint8 pixel
                   batches and pre-made tokens (normalisation, forward, L2 norm, copy back):
                   the ceiling for the stage.
  (b) end to end   `pipeline.kernels.encoder.embed_shards` over WebDataset tars (img2dataset's
                   layout, 256-px JPEGs with captions, as img2dataset writes them by default):
                   tar reading, JPEG decode and resize in --workers DataLoader processes,
                   tokenizing, the model, and one Parquet file written per shard.

Printed: images/s of each and the ratio (b)/(a), with (b) both including and excluding the
workers' start-up (fresh interpreters importing torch) and shut-down (their exit at the end).
The same functions, with ViT-B-32 in fp16 on a GPU, are bench/bench_embed_gpu.py.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import tempfile
import time
from multiprocessing import Pool

import numpy as np


def _jpeg(args: tuple[int, int, int]) -> bytes:
    from PIL import Image

    seed, w, h = args
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.random(3) * 6
    base = np.stack([np.sin(x / (13 + 7 * c) + y / (19 + 5 * c) + phase[c]) for c in range(3)], axis=-1)
    arr = ((base + 1) * 110 + rng.normal(0, 6, (h, w, 3))).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def make_shards(folder: str, n_images: int, per_shard: int, short_side: int = 256, processes: int | None = None) -> list:
    """WebDataset tars like img2dataset's (resize_mode keep_ratio: the short side is `short_side`)."""
    from pipeline.kernels.imageshards import discover_shards

    shapes = [(short_side, short_side), (short_side * 4 // 3, short_side), (short_side, short_side * 3 // 2)]
    jobs = [(i, *shapes[i % len(shapes)]) for i in range(n_images)]
    with Pool(processes or max(1, (os.cpu_count() or 2) - 1)) as pool:
        images = pool.map(_jpeg, jobs, chunksize=64)
    os.makedirs(folder, exist_ok=True)
    for s in range(0, n_images, per_shard):
        with tarfile.open(os.path.join(folder, f"{s // per_shard:05d}.tar"), "w") as tar:
            for i in range(s, min(n_images, s + per_shard)):
                key = f"{i:09d}"
                members = {
                    "jpg": images[i],
                    "txt": f"a photo of thing number {i} on a table, high resolution".encode(),
                    "json": json.dumps({"uid": f"{i:032x}", "key": key}).encode(),
                }
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return discover_shards(folder)[1]


def model_only(encoder, n_images: int, batch_size: int) -> float:
    """images/s of the encoder alone on pre-made uint8 batches and tokens (pinned on a GPU)."""
    import torch

    size = encoder.spec.size
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8, generator=gen)
    tokens = encoder.tokenizer([f"a photo of thing number {i} on a table, high resolution" for i in range(batch_size)])
    if encoder.device.startswith("cuda"):
        pixels, tokens = pixels.pin_memory(), tokens.pin_memory()
    for _ in range(3):  # warm-up (cuDNN/cuBLAS choices, autocast caches)
        encoder.encode_images(pixels)
        encoder.encode_texts(tokens)
    batches = max(1, n_images // batch_size)
    sync = torch.cuda.synchronize if encoder.device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(batches):
        encoder.encode_images(pixels)
        encoder.encode_texts(tokens)
    sync()
    return batches * batch_size / (time.perf_counter() - t0)


def compare(model: str, device: str, precision: str, n_images: int, batch_size: int, workers: int, per_shard: int) -> dict:
    """Run (a) and (b) on the same machine in one process; print and return the figures."""
    from pipeline.kernels.encoder import embed_shards, load_encoder, resolve_device
    from pipeline.stages.embed import EmbedConfig

    device = resolve_device(device)
    cfg = EmbedConfig(model=model, device=device, precision=precision, batch_size=batch_size, workers=workers)
    encoder = load_encoder(cfg, device, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        shards = make_shards(os.path.join(tmp, "in"), n_images, per_shard)
        made = time.perf_counter() - t0
        alone = model_only(encoder, n_images, batch_size)
        summary = embed_shards(shards, os.path.join(tmp, "out"), encoder, cfg, {s.name: "bench" for s in shards}, progress=False)
    e2e, steady = summary["images_per_s"], summary["images_per_s_after_startup"]
    name = torch_device_name(device)
    print(f"device: {name}; model {model} ({encoder.weights} weights), precision {encoder.precision}, batch {batch_size}, "
          f"decode workers {workers}, input {encoder.spec.size}px")
    print(f"data: {n_images} JPEGs (256-px short side) with captions in {len(shards)} tars; made in {made:.1f}s")
    print(f"  (a) model only (image + text)      {alone:9.1f} images/s")
    print(f"  (b) end to end, whole run          {e2e:9.1f} images/s   ratio (b)/(a) = {e2e / alone:.2f}")
    print(f"  (b) end to end, after start-up     {steady:9.1f} images/s   ratio (b)/(a) = {steady / alone:.2f}"
          f"   (worker start-up {summary['startup_seconds']:.1f}s, shut-down {summary['shutdown_seconds']:.1f}s)")
    return {"model_only": alone, "end_to_end": e2e, "end_to_end_after_startup": steady, "device": name}


def torch_device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} (torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-clip")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="decode processes (default 1: the model takes the other core)")
    parser.add_argument("--per-shard", type=int, default=256)
    args = parser.parse_args()
    import torch

    # One core for the model, the rest for the decode workers (the stage does the same on CPU).
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - args.workers))
    compare(args.model, "cpu", "fp32", args.images, args.batch_size, args.workers, args.per_shard)


if __name__ == "__main__":
    main()
