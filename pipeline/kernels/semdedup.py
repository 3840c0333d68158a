"""SemDeDup kernel (Abbas et al., 2023): each member's maximum cosine similarity to earlier members.

Spark-free numpy over one cluster. Members are ordered farthest from the centroid first (ties
broken by uid); member j is a semantic duplicate when max_{i<j} cos(x_i, x_j) > 1 - eps, the
maximum taken over *all* earlier members, removed ones included (../shared/MISSION.md, stage 9).
So A~B, B~C with A not~C keeps only A: C is compared with B, which is earlier although removed.
Because that rule needs only the per-member maximum, the maximum (and the member attaining it)
is stored once and any eps can be applied later without recomputing.

The similarity matrix is never formed: it is computed in B x B blocks (the j-block against every
i-block before it and against itself, the diagonal block's upper triangle masked), so memory is
the cluster's embeddings plus one B x B block (and its B x B boolean mask, a quarter of the
block), and no cross-block pair is skipped.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np


def farthest_first_order(distance: np.ndarray, uids: Sequence[str]) -> np.ndarray:
    """Indices that sort members by distance to the centroid, descending, ties by uid ascending."""
    keys = np.asarray(uids, dtype=str)
    return np.lexsort((keys, -np.asarray(distance, np.float64)))


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); cosine similarity is then a dot product."""
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0).astype(np.float32)


def max_similarity_to_earlier(x: np.ndarray, block_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For rows already in order, (max_{i<j} x_i . x_j, the first i attaining it) for every j.

    Row 0 has no earlier member: its maximum is -inf and its index -1. Exact: every pair i < j is
    computed once, in blocks; peak extra memory is one block_size x block_size float32 matrix.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    x = np.ascontiguousarray(x, np.float32)
    n = len(x)
    best = np.full(n, -np.inf, np.float32)
    arg = np.full(n, -1, np.int64)
    for j0 in range(0, n, block_size):
        j1 = min(n, j0 + block_size)
        xj = x[j0:j1]
        bj, aj = best[j0:j1], arg[j0:j1]
        for i0 in range(0, j1, block_size):
            i1 = min(n, i0 + block_size)
            s = xj @ x[i0:i1].T  # s[c, r] = cos(member j0+c, member i0+r)
            if i0 == j0:
                # Only earlier members count: keep r < c, the strictly lower triangle.
                np.copyto(s, -np.inf, where=_upper(block_size)[: j1 - j0, : j1 - j0])
            a = s.argmax(axis=1)
            m = s[np.arange(len(s)), a]
            a += i0
            # Strictly greater: on ties the earliest member (earlier block, then argmax's first) wins.
            better = m > bj
            bj[better] = m[better]
            aj[better] = a[better]
    return best, arg


@functools.lru_cache(maxsize=2)
def _upper(b: int) -> np.ndarray:
    """The b x b mask of the diagonal and above (read-only, cached per block size; a smaller
    diagonal block uses its top-left corner, so clusters of every size share one mask: building
    one per cluster size took a quarter of SemDeDup's time at 1000 members per cluster)."""
    mask = np.triu(np.ones((b, b), dtype=bool))
    mask.flags.writeable = False
    return mask


def semantic_duplicates(max_sim: np.ndarray, eps: float) -> np.ndarray:
    """The SemDeDup rule on stored maxima: True where max similarity to earlier members > 1 - eps."""
    s = np.asarray(max_sim, np.float64)
    return np.nan_to_num(s, nan=-np.inf) > 1.0 - eps


def dedup_cluster(
    uids: Sequence[str], distance: np.ndarray, embeddings: np.ndarray, block_size: int = 4096
) -> dict[str, np.ndarray]:
    """One cluster: order farthest first, then each member's max similarity to earlier members.

    Returns arrays in farthest-first order: `index` (row of the input), `rank` (0 = farthest),
    `max_sim_earlier` (NaN for rank 0), `most_similar` (input row of the earlier member attaining
    the maximum, -1 for rank 0).
    """
    order = farthest_first_order(distance, uids)
    x = normalize_rows(np.asarray(embeddings)[order])
    best, arg = max_similarity_to_earlier(x, block_size)
    most_similar = np.where(arg >= 0, order[np.maximum(arg, 0)], -1)
    return {
        "index": order,
        "rank": np.arange(len(order), dtype=np.int64),
        "max_sim_earlier": np.where(arg >= 0, best, np.nan).astype(np.float32),
        "most_similar": most_similar,
    }
