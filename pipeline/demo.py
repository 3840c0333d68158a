"""A synthetic demo pool: long-tailed concepts over real English words, near-duplicates, bad rows."""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.config import DemoConfig

log = logging.getLogger(__name__)

NOUNS = """
dog cat horse bird fish cow sheep goat pig chicken duck rabbit mouse lion tiger bear wolf fox deer
elephant giraffe zebra monkey snake turtle frog owl eagle parrot penguin dolphin whale shark crab
car truck bus bicycle motorcycle train boat ship airplane helicopter tractor scooter skateboard
house church castle bridge tower barn tent cabin hotel school hospital library museum stadium
tree flower rose tulip grass forest mountain river lake ocean beach island desert valley waterfall
chair table sofa bed lamp clock mirror window door carpet pillow blanket shelf desk bench
apple banana orange grape lemon cherry strawberry pear peach tomato potato carrot onion pepper
bread cake pizza sandwich burger salad soup pasta rice cheese cookie pie coffee tea juice wine
shirt dress jacket coat hat shoe boot sock scarf glove bag backpack umbrella watch ring necklace
guitar piano violin drum trumpet flute camera phone laptop computer keyboard television radio
book pen pencil notebook map poster painting sculpture statue vase bowl cup plate spoon knife fork
ball kite balloon toy doll puzzle robot rocket planet star moon sun cloud rain snow rainbow storm
man woman child baby girl boy family couple crowd soldier doctor teacher chef farmer artist player
kitchen bedroom bathroom garden garage office street road park market city village farm harbor
sunset sunrise night winter summer autumn spring wedding party concert festival parade game match
logo icon pattern texture background illustration diagram chart sign flag banner label sticker
""".split()
ADJECTIVES = """
red blue green yellow black white brown pink purple orange small large old new little big happy
beautiful cute vintage modern wooden golden silver bright dark sunny snowy rainy quiet busy
""".split()
PLACES = """
beach park street kitchen garden forest river field city table road mountain lake farm market
""".split()
TEMPLATES = (
    "a photo of a {adj} {noun}",
    "{adj} {noun} on the {place}",
    "the {noun} and the {noun2} near the {place}",
    "{Noun} in the {place}",
    "close-up of a {noun}, {adj} and {adj2}",
    "{n} {noun} at the {place}.",
    "{adj} {noun} - stock photo",
    "{Noun} {noun2} wallpaper",
)


@dataclass(frozen=True)
class DemoPool:
    path: str
    images: str
    rows: int
    malformed: int
    near_duplicates: int


def _zipf_probs(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def _caption(rng: np.random.Generator, concepts: list[str], probs: np.ndarray) -> tuple[str, str]:
    noun, noun2 = rng.choice(concepts, size=2, p=probs)
    adj, adj2 = rng.choice(ADJECTIVES, size=2)
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    text = template.format(
        noun=noun, noun2=noun2, Noun=noun.capitalize(), adj=adj, adj2=adj2,
        place=rng.choice(PLACES), n=int(rng.integers(2, 100)),
    )
    return str(noun), text


def _image(rng: np.random.Generator, concept: str, size: int) -> np.ndarray:
    # A colour per concept plus random blocks: images of one concept look alike, but differ.
    base = np.frombuffer(concept.encode().ljust(3, b"x")[:3], dtype=np.uint8).astype(np.int16) * 7 % 256
    img = np.empty((size, size, 3), dtype=np.int16)
    img[:] = base
    for _ in range(3):
        x0, y0 = rng.integers(0, size - 4, size=2)
        w, h = rng.integers(4, size // 2, size=2)
        img[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, size=3)
    img += rng.integers(-10, 11, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def generate_pool(out_dir: str, cfg: DemoConfig, seed: int = 0, base_url: str = "http://127.0.0.1:8765/images") -> DemoPool:
    """Write `<out_dir>/pool.parquet` (url, caption, key) and `<out_dir>/images/*.jpg`."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    concepts = list(NOUNS[: cfg.concepts]) if cfg.concepts <= len(NOUNS) else list(NOUNS)
    probs = _zipf_probs(len(concepts), cfg.zipf_exponent)
    n_dup = int(cfg.rows * cfg.near_duplicate_fraction)
    n_bad = max(8, int(cfg.rows * cfg.malformed_fraction))
    n_clean = cfg.rows - n_dup - n_bad

    urls: list[str | None] = []
    captions: list[str | None] = []
    keys: list[str] = []
    pixels: list[np.ndarray] = []

    def add(url: str | None, caption: str | None, img: np.ndarray | None) -> None:
        key = f"{len(keys):09d}"
        keys.append(key)
        if img is not None:
            name = f"{key}.jpg"
            with open(os.path.join(out_dir, "images", name), "wb") as fh:
                fh.write(_jpeg(img))
            url = f"{base_url}/{name}" if url == "auto" else url
        captions.append(caption)
        urls.append(url)

    for _ in range(n_clean):
        concept, text = _caption(rng, concepts, probs)
        img = _image(rng, concept, cfg.image_size)
        pixels.append(img)
        add("auto", text, img)
    # Near-duplicates: an existing pair with a slightly edited caption and a slightly noisy image.
    for _ in range(n_dup):
        src = int(rng.integers(n_clean))
        noisy = np.clip(pixels[src].astype(np.int16) + rng.integers(-4, 5, size=pixels[src].shape), 0, 255)
        add("auto", f"{captions[src]} (copy)" if rng.random() < 0.5 else captions[src], noisy.astype(np.uint8))
    # Malformed rows, each a case ingest must turn into a decision row.
    bad_cases = [
        (f"{base_url}/missing-caption.jpg", None),
        (f"{base_url}/empty.jpg", ""),
        (f"{base_url}/blank.jpg", " \t\n\u200b "),
        (f"{base_url}/huge.jpg", "word " * 210_000),
        (f"{base_url}/mojibake.jpg", "caf\ufffd au lait"),  # valid UTF-8: a caption; matches no entry
        (None, "a caption with no image url"),
        (urls[0], captions[0]),  # an exact (url, caption) duplicate
        (f"{base_url}/punct.jpg", ",.;:?!"),
    ]
    for i in range(n_bad):
        url, text = bad_cases[i % len(bad_cases)]
        if i >= len(bad_cases) and text is not None and len(text) > 100_000:
            text = "word " * 10  # only one megabyte caption, even in big demos
        add(url, text, None)

    table = pa.table(
        {"key": pa.array(keys, pa.string()), "url": pa.array(urls, pa.string()), "caption": pa.array(captions, pa.string())}
    )
    path = os.path.join(out_dir, "pool.parquet")
    pq.write_table(table, path, compression="zstd")
    log.info("demo pool: %d rows (%d near-duplicates, %d malformed) -> %s", len(keys), n_dup, n_bad, path)
    return DemoPool(path, os.path.join(out_dir, "images"), len(keys), n_bad, n_dup)


def write_concepts(path: str, n: int = 100) -> str:
    """A downstream concept list with synonyms for the demo: the first `n` nouns, singular and plural."""
    import json

    concepts = {noun: [noun, noun + "s"] for noun in NOUNS[:n]}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(concepts, fh, indent=1)
    return path
