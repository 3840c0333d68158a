"""Image preprocessing per core: the embed stage's loader against open_clip's own transform.

Run: .venv/bin/python bench/bench_preprocess.py [--size 224] [--generated N] [--repeat 3]

What it measures, in one process (one core, torch on one thread), on the same image bytes:

  (a) open_clip   `open_clip.transform.image_transform(size, is_train=False)` applied to
                  `PIL.Image.open(bytes)`, image by image: resize shortest side (bicubic),
                  centre crop, RGB, ToTensor, Normalize -> float (3, size, size).
  (b) loader      `pipeline.kernels.imageio.load_image`: the same geometry, but JPEGs decoded at
                  reduced size with Pillow's `draft` -> uint8 (size, size, 3); this is what the
                  embed stage's worker processes produce (normalisation runs on the model's
                  device, batched).
  (c) loader+norm (b) then `pipeline.kernels.imageio.normalize` on the CPU, one image at a time: the
                  same float tensor as (a), for a like-for-like comparison.

Image sets: the 758 real CommonCrawl images of ../shared/anchors/data/fondant (skipped with a
message when absent; most are small web images, so `draft` rarely applies) and generated
photo-like JPEGs of 640x480 to 1600x1200 (camera-sized, where `draft` pays off).

Printed per set: images/s per core of each, the ratios (b)/(a) and (c)/(a), and the mean
absolute pixel difference (0-255 scale) between (c) and (a) at --size, plus the share of
images whose outputs are identical.
"""

from __future__ import annotations

import argparse
import glob
import io
import time
from pathlib import Path

import numpy as np

FONDANT = (
    Path(__file__).resolve().parents[2] / "shared" / "anchors" / "data" / "fondant" / "playground" / "some-cool-pipeline"
    / "data" / "cool-pipeline" / "cool-pipeline-20231110150133" / "download_images" / "images"
)


def fondant_images() -> list[bytes] | None:
    import pyarrow.parquet as pq

    files = sorted(glob.glob(str(FONDANT / "*.parquet")))
    if not files:
        return None
    return [b for f in files for b in pq.read_table(f, columns=["data"]).column("data").to_pylist() if b]


def generated_images(n: int, seed: int = 0) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(640, 480), (800, 600), (1024, 768), (1280, 960), (1600, 1200), (480, 640), (1200, 800)]
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = rng.random(3) * 6
        base = np.stack([np.sin(x / (23 + 9 * c) + y / (31 + 5 * c) + phase[c]) for c in range(3)], axis=-1)
        arr = ((base + 1) * 110 + rng.normal(0, 6, (h, w, 3))).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def best_rate(fn, images: list[bytes], repeat: int) -> tuple[float, list]:
    best, outputs = 0.0, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        outputs = [fn(b) for b in images]
        best = max(best, len(images) / (time.perf_counter() - t0))
    return best, outputs


def bench_set(name: str, images: list[bytes], size: int, repeat: int) -> None:
    import torch
    from open_clip.transform import image_transform
    from PIL import Image

    from pipeline.kernels.imageio import PreprocessSpec, load_image, normalize

    spec = PreprocessSpec(size=size)
    transform = image_transform(size, is_train=False)

    def open_clip_way(b: bytes):
        return transform(Image.open(io.BytesIO(b)))

    def loader(b: bytes):
        return load_image(b, spec)

    def loader_norm(b: bytes):
        return normalize(torch.from_numpy(load_image(b, spec))[None], spec)[0]

    # Interleave the three so that machine noise hits each alike; keep the best pass of each.
    rates = {"a": 0.0, "b": 0.0, "c": 0.0}
    outs: dict[str, list] = {}
    for _ in range(repeat):
        for key, fn in (("a", open_clip_way), ("b", loader), ("c", loader_norm)):
            rate, outs[key] = best_rate(fn, images, 1)
            rates[key] = max(rates[key], rate)
    std = torch.tensor(spec.std)[:, None, None]
    diffs = [float(((c - a) * std).abs().mean()) * 255 for a, c in zip(outs["a"], outs["c"], strict=True)]
    same = sum(torch.equal(a, c) for a, c in zip(outs["a"], outs["c"], strict=True))
    mp = np.mean([Image.open(io.BytesIO(b)).size[0] * Image.open(io.BytesIO(b)).size[1] for b in images]) / 1e6
    print(f"\n{name}: {len(images)} images, mean {mp:.2f} megapixels, output {size}x{size}")
    print(f"  (a) open_clip transform      {rates['a']:8.1f} images/s per core")
    print(f"  (b) loader (uint8)           {rates['b']:8.1f} images/s per core   ratio (b)/(a) = {rates['b'] / rates['a']:.2f}")
    print(f"  (c) loader + CPU normalise   {rates['c']:8.1f} images/s per core   ratio (c)/(a) = {rates['c'] / rates['a']:.2f}")
    print(f"  mean absolute pixel difference (c) vs (a): {np.mean(diffs):.3f} (0-255 scale; max per image {np.max(diffs):.3f}); identical outputs: {same}/{len(images)}")


def main() -> None:
    import warnings

    import torch

    # (c) wraps the loader's read-only array without a copy; torch warns about that once.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--generated", type=int, default=200, help="number of generated JPEGs")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    real = fondant_images()
    if real is None:
        print(f"fondant images not found under {FONDANT}; skipping the real-image set")
    else:
        bench_set("real CommonCrawl images (fondant)", real, args.size, args.repeat)
    bench_set("generated photo-like JPEGs", generated_images(args.generated), args.size, args.repeat)


if __name__ == "__main__":
    main()
