"""MetaCLIP balancing, Spark-free: keep probabilities, the threshold t, and the hashed draws.

Each entry gets p = min(1, t / count); a text with matched entries S is kept with probability
1 - prod_{i in S} (1 - p_i) ("Demystifying CLIP Data", Algorithm 1): it is kept when any of
its entries draws u < p. Every u comes from a hash of (seed, uid, entry id), never from a
generator with state, so the subset is the same on any partitioning and any cluster.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser (Steele et al.), elementwise on uint64 with wrap-around."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def uid_hashes(uids: Sequence[str]) -> np.ndarray:
    """64-bit hash per uid: the first 8 bytes of BLAKE2b(uid, UTF-8), little-endian."""
    digest = b"".join(hashlib.blake2b(u.encode("utf-8", "surrogatepass"), digest_size=8).digest() for u in uids)
    return np.frombuffer(digest, dtype="<u8").astype(np.uint64)


def uniforms(seed: int, uid_hash: np.ndarray, entry_ids: np.ndarray) -> np.ndarray:
    """u in [0, 1) for each (uid, entry) pair:

    a = splitmix64(seed); b = splitmix64(uid_hash XOR a); u = splitmix64(b XOR entry_id * golden) >> 11, / 2^53.
    """
    with np.errstate(over="ignore"):
        a = splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
        b = splitmix64(np.asarray(uid_hash, np.uint64) ^ a)
        c = splitmix64(b ^ (np.asarray(entry_ids, np.uint64) * _GOLDEN))
    return (c >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def keep_probabilities(counts: np.ndarray, t: float) -> np.ndarray:
    """p_i = min(1, t / count_i); entries never seen get 1 (they cannot limit anything)."""
    counts = np.asarray(counts, np.float64)
    p = np.ones_like(counts)
    seen = counts > 0
    p[seen] = np.minimum(1.0, t / counts[seen])
    return p


def threshold_for_tail_fraction(counts: np.ndarray, fraction: float) -> tuple[int, float]:
    """The smallest t whose tail (entries with count < t) holds at least `fraction` of all matches.

    Returns (t, the tail share that t achieves). MetaCLIP 2 picks t this way.
    """
    c = np.sort(np.asarray(counts, np.int64)[np.asarray(counts) > 0])
    if len(c) == 0:
        raise ValueError("no entry has a non-zero count; cannot derive t from a tail fraction")
    cum = np.cumsum(c)
    total = cum[-1]
    k = int(np.searchsorted(cum, fraction * total - 1e-9 * total, side="left"))
    k = min(k, len(c) - 1)
    t = int(c[k]) + 1
    return t, float(c[c < t].sum() / total)


def balance_batch(
    uids: Sequence[str], offsets: np.ndarray, values: np.ndarray, p: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask, keep probability) per text, for CSR entry ids."""
    n = len(uids)
    per = np.diff(offsets)
    text = np.repeat(np.arange(n), per)
    u = uniforms(seed, np.repeat(uid_hashes(uids), per), values)
    pv = p[values]
    keep = np.bincount(text[u < pv], minlength=n) > 0
    with np.errstate(divide="ignore"):
        log_miss = np.bincount(text, weights=np.log1p(-np.minimum(pv, 1.0)), minlength=n)
    prob = np.where(per > 0, 1.0 - np.exp(log_miss), 0.0)
    return keep, prob
