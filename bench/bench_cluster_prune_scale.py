"""Cluster + prune on N seeded embeddings in Spark local mode: wall time and peak memory per stage.

Embeddings shaped like the embed stage's output (uid, image_embedding, text) with planted near
duplicates are written as Parquet, then `run_cluster` and `run_prune` (SemDeDup, DBP, cap) run on
them, the same functions as `curate cluster` / `curate prune`. Peak resident memory is sampled from
/proc for the driver JVM, the Python workers and this (driver) process.

    .venv/bin/python bench/bench_cluster_prune_scale.py [--n 1000000 --dim 64 --k 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def write_pool(path: str, n: int, dim: int, centers: int, dup_fraction: float, seed: int, files: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    os.makedirs(path)
    per = -(-n // files)
    for f in range(files):
        lo, hi = f * per, min(n, (f + 1) * per)
        m = hi - lo
        x = c[rng.integers(0, centers, m)] + rng.normal(size=(m, dim)).astype(np.float32) * (1.0 / np.sqrt(dim))
        dups = rng.random(m) < dup_fraction  # near copies of the row before
        dups[0] = False
        idx = np.flatnonzero(dups)
        x[idx] = x[idx - 1] + rng.normal(size=(len(idx), dim)).astype(np.float32) * 0.01 / np.sqrt(dim)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        # float32 as the embed stage writes it: a float32 array times NumPy's float64 scalar
        # 1/sqrt(dim) above is float64 under NumPy 2's promotion rules.
        x = x.astype(np.float32, copy=False)
        uids = [f"{i:012d}" for i in range(lo, hi)]
        emb = pa.ListArray.from_arrays(pa.array(np.arange(m + 1, dtype=np.int32) * dim), pa.array(x.ravel()))
        pq.write_table(pa.table({"uid": uids, "image_embedding": emb, "text": [f"caption {u}" for u in uids]}), f"{path}/part-{f:04d}.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--centers", type=int, default=300, help="mixture components of the generated pool")
    ap.add_argument("--dup-fraction", type=float, default=0.05)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="6g")
    ap.add_argument("--dir", help="work folder (default: a temporary one, removed at the end)")
    args = ap.parse_args()

    from procmem import PeakMemory

    from pipeline.api import run_cluster, run_prune
    from pipeline.core.config import SparkConfig
    from pipeline.core.spark import get_spark
    from pipeline.registry import PipelineConfig
    from pipeline.stages.cluster import ClusterConfig
    from pipeline.stages.prune import PruneConfig

    work = args.dir or tempfile.mkdtemp(prefix="bench-cluster-prune-")
    pool = os.path.join(work, "pool")
    if not os.path.exists(pool):
        t0 = time.perf_counter()
        write_pool(pool, args.n, args.dim, args.centers, args.dup_fraction, 0, args.files)
        print(f"generated {args.n:,} x {args.dim} embeddings in {time.perf_counter() - t0:.1f}s ({args.files} files)")
    cfg = PipelineConfig(
        cluster=ClusterConfig(k=args.k, niter=20, sample_per_centroid=256),
        prune=PruneConfig(dedup_eps=0.05, keep_fraction=0.8, temperature=0.5, inter_k=20, max_per_cluster=2 * args.n // args.k),
    )
    spark = get_spark(SparkConfig(master=args.master, driver_memory=args.driver_memory, shuffle_partitions=8, conf={"spark.ui.showConsoleProgress": "false"}))
    run_root = os.path.join(work, "run")
    print(f"{args.n:,} embeddings x {args.dim} dims, k={args.k}, Spark {args.master}, driver memory {args.driver_memory}, {os.cpu_count()} cores")
    total = 0.0
    for name, call in (
        ("cluster", lambda: run_cluster(spark, pool, run_root, cfg, force=True)),
        ("prune", lambda: run_prune(spark, pool, None, run_root, cfg, force=True)),
    ):
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            stats = call().stats
            seconds = time.perf_counter() - t0
        total += seconds
        extra = f"sample {stats['sample_size']:,}, faiss {stats['train_seconds']:.1f}s" if name == "cluster" else (
            f"after dedup {stats['after_dedup']:,}, after DBP {stats['after_dbp']:,}, after cap {stats['after_cap']:,}"
        )
        print(f"{name:8s} {seconds:7.1f}s  {stats['rows_in']:,} in, {stats['kept']:,} kept, dropped {stats['dropped']}; {extra}")
        print(f"         peak RSS MiB: driver JVM {mem.peak['jvm']:.0f}, Python workers max {mem.peak['python_worker_max']:.0f} "
              f"(all {mem.peak['python_workers_total']:.0f}), driver Python {mem.peak['driver_python']:.0f}")
    print(f"cluster + prune: {total:.1f}s for {args.n:,} embeddings ({args.n / total:,.0f} per second)")
    spark.stop()
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
