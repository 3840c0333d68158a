"""Density-based pruning kernel ("Effective pruning of web-scale datasets based on complexity of
concept clusters", Abbas et al., 2024): per-cluster quotas from cluster complexity.

Spark-free numpy over the K clusters (../shared/MISSION.md, stage 9):
  d_intra(j) = mean cosine distance of cluster j's members to its centroid,
  d_inter(j) = mean cosine distance from centroid j to its k nearest other centroids,
  C_j = d_inter(j) * d_intra(j),  P = softmax(C / tau),
  x_j = clip(N' P_j + nu, lb_j, n_j) with the one scalar nu that makes sum_j x_j = N',
  lb_j = min(floor_ratio * N' / K, n_j - 1).
That x is the Euclidean projection of N'P onto {sum x = N', lb <= x <= n} (the KKT conditions of
min ||x - N'P||^2 give exactly this clip form), found here by bisection on nu. The integer quotas
are the floors plus one for the clusters with the largest fractional parts, so they sum to N'
exactly and stay within [lb_j, n_j].
"""

from __future__ import annotations

import numpy as np


def inter_cluster_distance(centroids: np.ndarray, inter_k: int = 20, block_size: int = 1024) -> np.ndarray:
    """d_inter: mean cosine distance from each centroid to its `inter_k` nearest other centroids.

    Computed in row blocks, so K x K is never held at once. With one centroid the mean is empty: 0.
    """
    c = np.asarray(centroids, np.float64)
    norms = np.linalg.norm(c, axis=1, keepdims=True)
    c = c / np.where(norms > 0, norms, 1.0)
    k_total = len(c)
    kk = min(inter_k, k_total - 1)
    out = np.zeros(k_total, np.float64)
    if kk < 1:
        return out
    for r0 in range(0, k_total, block_size):
        r1 = min(k_total, r0 + block_size)
        dist = 1.0 - c[r0:r1] @ c.T
        dist[np.arange(r1 - r0), np.arange(r0, r1)] = np.inf  # not its own neighbour
        nearest = np.partition(dist, kk - 1, axis=1)[:, :kk]
        out[r0:r1] = nearest.mean(axis=1)
    return out


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max()) if len(z) else z
    return e / e.sum() if len(z) else e


def water_fill(target: np.ndarray, lower: np.ndarray, upper: np.ndarray, total: float, iters: int = 200) -> tuple[np.ndarray, float]:
    """x = clip(target + nu, lower, upper) with sum x = total, nu by bisection; returns (x, nu).

    sum clip(target + nu) is continuous and non-decreasing in nu, from sum(lower) to sum(upper),
    so a solution exists whenever sum(lower) <= total <= sum(upper).
    """
    target, lower, upper = (np.asarray(a, np.float64) for a in (target, lower, upper))
    if np.any(lower > upper):
        raise ValueError("water_fill: a lower bound exceeds its upper bound")
    if not lower.sum() - 1e-9 <= total <= upper.sum() + 1e-9:
        raise ValueError(f"water_fill: total {total} outside [{lower.sum()}, {upper.sum()}]")
    if len(target) == 0:
        return target, 0.0
    lo = float(np.min(lower - target)) - 1.0
    hi = float(np.max(upper - target)) + 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if np.clip(target + mid, lower, upper).sum() < total:
            lo = mid
        else:
            hi = mid
    nu = 0.5 * (lo + hi)
    return np.clip(target + nu, lower, upper), nu


def integer_quotas(x: np.ndarray, lower: np.ndarray, upper: np.ndarray, total: int) -> np.ndarray:
    """Round x to integers in [lower, upper] (integer bounds) summing to `total` exactly.

    Floors first; the remainder goes one each to the clusters with the largest fractional parts
    (ties to the lower cluster index) that are still below their bound; a negative remainder
    (only from float error) takes one each from the smallest fractional parts above their lower
    bound.
    """
    x = np.asarray(x, np.float64)
    lower = np.asarray(lower, np.int64)
    upper = np.asarray(upper, np.int64)
    q = np.clip(np.floor(x + 1e-9).astype(np.int64), lower, upper)
    frac = x - q
    idx = np.arange(len(x))
    remainder = int(total - q.sum())
    while remainder > 0:
        room = np.flatnonzero(q < upper)
        if len(room) == 0:
            raise ValueError("integer_quotas: total exceeds the sum of upper bounds")
        pick = room[np.lexsort((idx[room], -frac[room]))][:remainder]
        q[pick] += 1
        frac[pick] -= 1.0
        remainder -= len(pick)
    while remainder < 0:
        room = np.flatnonzero(q > lower)
        if len(room) == 0:
            raise ValueError("integer_quotas: total below the sum of lower bounds")
        pick = room[np.lexsort((idx[room], frac[room]))][:-remainder]
        q[pick] -= 1
        frac[pick] += 1.0
        remainder += len(pick)
    return q


def kept_total(survivors: int, keep_fraction: float) -> int:
    """N' = round(keep_fraction * survivors), halves rounded up."""
    return int(np.floor(keep_fraction * survivors + 0.5))


def lower_bounds(n: np.ndarray, keep_total: int, floor_ratio: float) -> np.ndarray:
    """lb_j = min(floor(floor_ratio * N' / K), n_j - 1), at least 0; K = clusters with members.

    Floored to an integer so the integer quotas can respect it; sum lb <= floor_ratio * N' <= N'.
    """
    n = np.asarray(n, np.int64)
    k = max(1, int((n > 0).sum()))
    floor = int(np.floor(floor_ratio * keep_total / k))
    return np.maximum(0, np.minimum(floor, n - 1))


def dbp_quotas(
    n: np.ndarray, d_intra: np.ndarray, d_inter: np.ndarray, keep_fraction: float, temperature: float = 0.5, floor_ratio: float = 0.0
) -> dict[str, np.ndarray | int | float]:
    """Per-cluster quotas for clusters of sizes n with the given distances.

    Clusters with n_j = 0 take no part in the softmax and get quota 0. Returns `quota` (int64,
    sums to N' exactly), `x` (the continuous solution), `p`, `complexity`, `lower`, `keep_total`
    and `nu`.
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= floor_ratio <= 1.0:
        raise ValueError(f"floor_ratio must be in [0, 1], got {floor_ratio}")
    n = np.asarray(n, np.int64)
    total = kept_total(int(n.sum()), keep_fraction)
    live = n > 0
    complexity = np.asarray(d_inter, np.float64) * np.asarray(d_intra, np.float64)
    p = np.zeros(len(n), np.float64)
    p[live] = softmax(complexity[live] / temperature)
    lower = lower_bounds(n, total, floor_ratio)
    x, nu = water_fill(total * p, lower, n, total)
    quota = integer_quotas(x, lower, n, total)
    return {"quota": quota, "x": x, "p": p, "complexity": complexity, "lower": lower, "keep_total": total, "nu": nu}
