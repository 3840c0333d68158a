"""SemDeDup kernel: pairs per second of the blocked exact kernel vs a plain numpy full matmul over
the same clusters, and the peak memory of each; then one large cluster with the blocked kernel only
(the full matrix of a 200k-member cluster would need 200k^2 x 4 bytes = 160 GB).

Both compute, for every member j, max over earlier members i of cos(i, j); results are checked equal.
Peak memory is numpy's allocations as tracemalloc sees them (inputs excluded).

    .venv/bin/python bench/bench_semdedup.py [--sizes 2000,4000,8000] [--dim 256] [--big 200000 --big-dim 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def full_matmul(x: np.ndarray) -> np.ndarray:
    """The plain way: the whole n x n similarity matrix, lower triangle masked, column maxima."""
    s = x @ x.T
    np.copyto(s, -np.inf, where=np.tri(len(x), dtype=bool))  # keep i < j: row i, column j
    return s.max(axis=0)


def measure(fn, x):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn(x)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,4000,8000,12000", help="cluster sizes, comma-separated")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--block", type=int, default=4096)
    ap.add_argument("--big", type=int, default=200_000, help="members of the large cluster (0 = skip)")
    ap.add_argument("--big-dim", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from pipeline.kernels.semdedup import max_similarity_to_earlier, normalize_rows

    rng = np.random.default_rng(args.seed)
    sizes = [int(s) for s in args.sizes.split(",")]
    clusters = [normalize_rows(rng.normal(size=(n, args.dim)).astype(np.float32)) for n in sizes]
    pairs = sum(n * (n - 1) // 2 for n in sizes)
    print(f"clusters: sizes {sizes}, dim {args.dim}, {pairs:,} pairs; block {args.block}; {os.cpu_count()} cores")
    t_blocked = t_full = 0.0
    peak_blocked = peak_full = 0
    for x in clusters:
        (best, _), s1, p1 = measure(lambda v: max_similarity_to_earlier(v, args.block), x)
        ref, s2, p2 = measure(full_matmul, x)
        np.testing.assert_allclose(best[1:], ref[1:], atol=1e-5)
        t_blocked += s1
        t_full += s2
        peak_blocked, peak_full = max(peak_blocked, p1), max(peak_full, p2)
    print(f"blocked kernel:   {pairs / t_blocked / 1e6:8.1f} M pairs/s ({t_blocked:.2f}s), peak {peak_blocked / 2**20:8.1f} MiB")
    print(f"full numpy matmul: {pairs / t_full / 1e6:8.1f} M pairs/s ({t_full:.2f}s), peak {peak_full / 2**20:8.1f} MiB")
    print(f"ratio blocked/full: speed {t_full / t_blocked:.2f}x, peak memory {peak_blocked / peak_full:.3f}x (same maxima)")

    if args.big:
        n = args.big
        x = normalize_rows(rng.normal(size=(n, args.big_dim)).astype(np.float32))
        (best, _), s, peak = measure(lambda v: max_similarity_to_earlier(v, args.block), x)
        big_pairs = n * (n - 1) // 2
        print(f"one cluster of {n:,} members x {args.big_dim} dims: {big_pairs:,} pairs in {s:.1f}s "
              f"({big_pairs / s / 1e6:.1f} M pairs/s), peak {peak / 2**20:.1f} MiB above the {x.nbytes / 2**20:.1f} MiB of embeddings; "
              f"the full matrix would need {n * n * 4 / 2**30:.0f} GiB")


if __name__ == "__main__":
    main()
