"""FAISS k-means (the cluster stage's trainer) vs Spark MLlib KMeans on the same seeded Gaussian mixture.

Both start from random centroids and run the same number of Lloyd iterations (MLlib: initMode
"random", tol 0) on all n points; timed is training only (data already in memory: a numpy array for
FAISS, a cached DataFrame of vectors for MLlib). The objective of each is computed the same way, on
the same data: the sum of squared L2 distances to the nearest centroid.

    .venv/bin/python bench/bench_kmeans.py                      # the issue's size: 1M x 256, k=1000
    .venv/bin/python bench/bench_kmeans.py --n 200000 --k 200 --niter 10
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def gaussian_mixture(n: int, dim: int, components: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(components, dim)).astype(np.float32) * 3
    labels = rng.integers(0, components, n)
    x = centers[labels]
    for s in range(0, n, 100_000):  # in place, in chunks, to keep peak memory near n x dim
        x[s : s + 100_000] += rng.normal(size=(min(100_000, n - s), dim)).astype(np.float32)
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--components", type=int, default=0, help="mixture components (default: k)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="8g")
    args = ap.parse_args()

    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.core.config import SparkConfig
    from pipeline.core.spark import get_spark
    from pipeline.kernels.kmeans import sum_squared_distances, train_kmeans

    x = gaussian_mixture(args.n, args.dim, args.components or args.k, args.seed)
    print(f"data: {args.n} x {args.dim} float32 Gaussian mixture ({args.components or args.k} components, seed {args.seed}); "
          f"k={args.k}, {args.niter} iterations, random initialisation for both; {os.cpu_count()} cores")

    t0 = time.perf_counter()
    out = train_kmeans(x, args.k, args.niter, args.seed, spherical=False)
    faiss_s = time.perf_counter() - t0
    faiss_obj = sum_squared_distances(x, out["centroids"])
    print(f"faiss {faiss.__version__} ({'GPU' if out['gpu'] else f'CPU, {faiss.omp_get_max_threads()} threads'}): "
          f"{faiss_s:.2f}s, objective {faiss_obj:.6g}")

    spark = get_spark(SparkConfig(master=args.master, driver_memory=args.driver_memory, conf={"spark.ui.showConsoleProgress": "false"}))
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.parquet")
        step = 100_000
        with pq.ParquetWriter(path, pa.schema([("features", pa.list_(pa.float32()))])) as w:
            for s in range(0, args.n, step):
                chunk = x[s : s + step]
                w.write_table(pa.table({"features": pa.ListArray.from_arrays(
                    pa.array(np.arange(len(chunk) + 1, dtype=np.int32) * args.dim), pa.array(chunk.ravel()))}))
        df = spark.read.parquet(path).select(array_to_vector("features").alias("features")).repartition(spark.sparkContext.defaultParallelism).cache()
        df.count()
        km = KMeans(k=args.k, maxIter=args.niter, tol=0.0, initMode="random", seed=args.seed, featuresCol="features")
        t0 = time.perf_counter()
        model = km.fit(df)
        mllib_s = time.perf_counter() - t0
        df.unpersist()
    mllib_c = np.array([c for c in model.clusterCenters()], np.float32)
    mllib_obj = sum_squared_distances(x, mllib_c)
    print(f"spark {spark.version} MLlib KMeans ({args.master}): {mllib_s:.2f}s, objective {mllib_obj:.6g} "
          f"(its own trainingCost {model.summary.trainingCost:.6g}, {model.summary.numIter} iterations)")
    print(f"speed-up faiss vs MLlib: {mllib_s / faiss_s:.1f}x; objective ratio faiss/MLlib: {faiss_obj / mllib_obj:.4f} "
          f"({'no worse' if faiss_obj <= mllib_obj * 1.0001 else 'worse'})")
    spark.stop()


if __name__ == "__main__":
    main()
