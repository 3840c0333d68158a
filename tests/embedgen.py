"""Seeded embeddings shaped like the embed stage's output (uid, image_embedding, text_embedding, text)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def mixture(n: int, dim: int, centers: int, seed: int, spread: float = 0.35) -> np.ndarray:
    """n unit vectors around `centers` random directions (float32)."""
    rng = np.random.default_rng(seed)
    c = unit(rng.normal(size=(centers, dim)))
    x = c[rng.integers(0, centers, n)] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim) * 3
    return unit(x).astype(np.float32)


def plant_duplicates(x: np.ndarray, pairs: int, seed: int, noise: float = 0.02) -> np.ndarray:
    """Rows 0..pairs-1 become near copies of rows pairs..2*pairs-1, plus chains A~B~C with A not~C.

    Chains: rows 2p+3i, 2p+3i+1, 2p+3i+2 (for as many as fit in the next 30 rows) lie on a great
    circle 0.25 rad apart: cos(A,B) = cos(B,C) = 0.969, cos(A,C) = 0.878.
    """
    rng = np.random.default_rng(seed)
    x = x.copy()
    dim = x.shape[1]
    x[:pairs] = unit(x[pairs : 2 * pairs] + noise * rng.normal(size=(pairs, dim)) / np.sqrt(dim))
    for i in range(10):
        a = 2 * pairs + 3 * i
        if a + 2 >= len(x):
            break
        u = x[a].astype(np.float64)
        v = rng.normal(size=dim)
        v = unit(v - (v @ u) * u)
        for step in (1, 2):
            x[a + step] = (np.cos(0.25 * step) * u + np.sin(0.25 * step) * v).astype(np.float32)
    return x


def write_embeddings(path, x: np.ndarray, uids: list[str] | None = None, rows: list | None = None, row_group_size: int = 64) -> list[str]:
    """One Parquet file like the embed stage's output; `rows` replaces image_embedding per row (None, NaN...)."""
    n = len(x)
    uids = uids or [f"u{i:05d}" for i in range(n)]
    emb = [list(map(float, r)) for r in x]
    for i, value in (rows or []):
        emb[i] = value
    table = pa.table({
        "uid": uids,
        "image_embedding": pa.array(emb, pa.list_(pa.float32())),
        "text_embedding": pa.array([list(map(float, r[::-1])) for r in x], pa.list_(pa.float32())),
        "text": [f"caption {u}" for u in uids],
    })
    pq.write_table(table, str(path), row_group_size=row_group_size)
    return uids
