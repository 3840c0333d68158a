"""Clustering stage: FAISS k-means on a deterministic sample, then every embedding assigned on Spark.

Kernels (numpy, FAISS) first, the Spark adapter and the stage runner after. Training runs on the
driver on at most k x sample_per_centroid points (one GPU when faiss has one, else CPU); the sample
is the points with the smallest xxhash64(seed, uid), so it is the same on any partitioning.
Assignment broadcasts the centroids and runs a numpy matmul per Arrow batch on the executors.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.config import ConfigError
from pipeline.core.errors import UserError
from pipeline.core.protocol import Context, Input, Output, Stage


@dataclass(frozen=True)
class ClusterConfig:
    # Owned by the cluster stage (pipeline/stages/cluster.py).
    k: int = 100
    # Cosine k-means (unit-normalised rows and centroids); distance = 1 - cos. Off: squared L2.
    spherical: bool = True
    # FAISS trains on at most k x sample_per_centroid points (its max_points_per_centroid).
    sample_per_centroid: int = 256
    niter: int = 20
    # Nearest clusters recorded per row (top_clusters, top_distances) for multi-label analysis.
    top_m: int = 3
    embedding_col: str = "image_embedding"
    # Embedding dimension; None = the most common length in the input (others are invalid rows).
    dim: int | None = None

    def validate(self, where: str) -> None:
        for name in ("k", "sample_per_centroid", "niter", "top_m"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be >= 1, got {getattr(self, name)}")
        if self.dim is not None and self.dim < 1:
            raise ConfigError(f"{where}.dim: must be >= 1, got {self.dim}")


log = logging.getLogger(__name__)
STAGE_NAME = "cluster"


class ClusterError(UserError):
    """The clustering input or settings cannot work (too few points, no embedding column, ...)."""


def require_faiss():
    try:
        import faiss
    except ImportError:
        raise ClusterError("faiss is not installed: pip install 'curate-pipeline[cluster]' (faiss-cpu) or '[gpu]' (faiss-gpu)") from None
    return faiss


# --- kernels --------------------------------------------------------------------------------


def prepare(x: np.ndarray, spherical: bool) -> np.ndarray:
    """float32 rows; unit-normalised when clustering is spherical (cosine is scale-free)."""
    x = np.ascontiguousarray(x, np.float32)
    if spherical:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0).astype(np.float32)
    return x


def train_kmeans(x: np.ndarray, k: int, niter: int, seed: int, spherical: bool, gpu: bool | None = None) -> dict[str, Any]:
    """FAISS k-means on all of `x` (already sampled): centroids (k x d float32), objective, info."""
    faiss = require_faiss()
    n, d = x.shape
    if n < k:
        raise ClusterError(f"cluster: k={k} but only {n} valid embeddings to train on; lower --k")
    use_gpu = bool(faiss.get_num_gpus() > 0) if gpu is None else gpu
    km = faiss.Kmeans(
        d, k, niter=niter, seed=int(seed) % (2**31 - 1), spherical=spherical, gpu=use_gpu,
        # x is already the sample: FAISS must not subsample it again.
        max_points_per_centroid=max(1, -(-n // k)), min_points_per_centroid=1, verbose=False,
    )
    km.train(prepare(x, spherical))
    centroids = np.ascontiguousarray(km.centroids, np.float32)
    return {
        "centroids": centroids,
        "faiss_objective": float(km.obj[-1]) if len(km.obj) else None,
        "sse": sum_squared_distances(prepare(x, spherical), centroids),
        "gpu": use_gpu,
        "faiss_version": faiss.__version__,
    }


def sum_squared_distances(x: np.ndarray, centroids: np.ndarray, batch: int = 65536) -> float:
    """The k-means objective: sum over points of the squared L2 distance to the nearest centroid."""
    c = np.asarray(centroids, np.float32)
    cc = (c.astype(np.float64) ** 2).sum(axis=1)
    total = 0.0
    for s in range(0, len(x), batch):
        xb = np.asarray(x[s : s + batch], np.float32)
        d2 = (xb.astype(np.float64) ** 2).sum(axis=1)[:, None] - 2.0 * (xb @ c.T) + cc[None, :]
        total += float(np.maximum(d2.min(axis=1), 0.0).sum())
    return total


def exact_distances(x: np.ndarray, centroids: np.ndarray, ids: np.ndarray, spherical: bool) -> np.ndarray:
    """Distances of each row to the given centroids, row by row in float64.

    Row-wise (not one matmul over the batch) so the value does not depend on which rows share a
    batch, i.e. on the partitioning: 1 - cos when spherical (rows and centroids unit-normalised),
    else the squared L2 distance.
    """
    x64 = np.asarray(x, np.float64)
    c64 = np.asarray(centroids, np.float64)[ids]  # (n, m, d)
    if spherical:
        c64 = c64 / np.maximum(np.linalg.norm(c64, axis=2, keepdims=True), 1e-30)
        return 1.0 - np.einsum("nd,nmd->nm", x64, c64)
    diff = x64[:, None, :] - c64
    return np.einsum("nmd,nmd->nm", diff, diff)


def assign(x: np.ndarray, centroids: np.ndarray, top_m: int, spherical: bool) -> tuple[np.ndarray, np.ndarray]:
    """The top_m nearest centroids of each row: (ids (n, m) int32, distances (n, m) float32).

    Candidates come from a float32 matmul; the few nearest are re-ranked by exact row-wise
    distances (ties by centroid id), so the result is independent of the batch a row is in.
    Rows go in chunks so the n x k score matrix stays around 64 MB whatever k is.
    """
    x = prepare(x, spherical)
    c = prepare(centroids, spherical)
    k = len(c)
    m = min(top_m, k)
    cand = min(k, m + 2)
    cc = (c * c).sum(axis=1)[None, :]
    ids_out = np.empty((len(x), m), np.int32)
    dist_out = np.empty((len(x), m), np.float32)
    step = max(16, min(4096, (1 << 24) // max(1, k)))
    for s in range(0, len(x), step):
        xb = x[s : s + step]
        score = -(xb @ c.T) if spherical else cc - 2.0 * (xb @ c.T)
        rows = np.arange(len(xb))[:, None]
        if cand < k:
            ids = np.argpartition(score, cand - 1, axis=1)[:, :cand]
            # argpartition picks any of several centroids tied at the cut: a row with more
            # candidates at or below its cut than it kept is re-ranked over all of them below.
            cut = score[rows, ids].max(axis=1)
            crowded = np.flatnonzero((score <= cut[:, None]).sum(axis=1) > cand)
        else:
            ids = np.tile(np.arange(k), (len(xb), 1))
            crowded = ()
        dist = exact_distances(xb, c, ids, spherical)
        order = np.lexsort((ids, dist), axis=1)[:, :m]
        ids_out[s : s + step] = ids[rows, order]
        dist_out[s : s + step] = dist[rows, order]
        for r in crowded:
            wide = np.flatnonzero(score[r] <= cut[r])[None, :]
            d = exact_distances(xb[r : r + 1], c, wide, spherical)
            pick = np.lexsort((wide, d), axis=1)[0, :m]
            ids_out[s + r] = wide[0, pick]
            dist_out[s + r] = d[0, pick]
    return ids_out, dist_out


def centroids_bytes(centroids: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(centroids, np.float32), allow_pickle=False)
    return buf.getvalue()


def load_centroids(fs, path: str) -> np.ndarray:
    """Centroids saved by the cluster stage (`np.load` without pickles)."""
    return np.load(io.BytesIO(fs.read_bytes(path)), allow_pickle=False)


# --- Spark adapter ----------------------------------------------------------------------------


def with_embedding_check(df, col: str, dim: int):
    """Adds `_emb` (the column as array<float>) and `_detail`: why it cannot be used, null when it can.

    One pass over the values: their sum of squares in double is null for a null value, NaN or
    inf for a NaN or infinite one (float32 squares cannot overflow a double), 0 for a zero vector.
    """
    from pyspark.sql import functions as F

    e = F.col("_emb")
    square_norm = F.aggregate(e, F.lit(0.0).cast("double"), lambda acc, v: acc + v.cast("double") * v.cast("double"))
    checked = df.withColumn("_emb", F.col(col).cast("array<float>")).withColumn("_sq", square_norm)
    sq = F.col("_sq")
    detail = (
        F.when(e.isNull(), F.lit("no embedding"))
        .when(F.size(e) != dim, F.format_string(f"dimension %d, expected {dim}", F.size(e)))
        .when(sq.isNull(), F.lit("null value"))
        .when(F.isnan(sq) | (sq == F.lit(float("inf"))), F.lit("NaN or infinite value"))
        .when(sq == 0, F.lit("zero vector"))
    )
    return checked.withColumn("_detail", detail).drop("_sq")


def embedding_dimension(df, col: str) -> int:
    """The most common embedding length (ties: the smaller); other lengths are invalid rows."""
    from pyspark.sql import functions as F

    row = (
        df.where(F.col(col).isNotNull() & (F.size(col) > 0))
        .groupBy(F.size(col).alias("dim")).count()
        .orderBy(F.desc("count"), "dim").first()
    )
    if row is None:
        raise ClusterError(f"cluster: no non-empty embedding in column {col}")
    return int(row["dim"])


def sample_embeddings(valid, seed: int, n: int, dim: int) -> tuple[np.ndarray, list[str]]:
    """The n valid rows with the smallest xxhash64(seed, uid) (ties by uid), as (matrix, uids).

    A hash of (seed, uid) picks the same rows on any partitioning; order by it on the driver too.
    """
    import pyarrow.compute as pc
    from pyspark.sql import functions as F

    key = F.xxhash64(F.lit(int(seed)), F.col("uid"))
    table = valid.select("uid", "_emb", key.alias("_key")).orderBy("_key", "uid").limit(n).toArrow()
    table = table.sort_by([("_key", "ascending"), ("uid", "ascending")])
    emb = table.column("_emb").combine_chunks()
    values = pc.list_flatten(emb).to_numpy(zero_copy_only=False).astype(np.float32)
    return values.reshape(len(table), dim), table.column("uid").to_pylist()


def with_cluster_assignments(checked, centroids: np.ndarray, top_m: int, spherical: bool):
    """Needs uid, _emb (array<float>) and _detail (null = valid). Adds cluster_id, distance,
    top_clusters, top_distances and _reason (invalid_embedding where _detail is set)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from pipeline.core import reasons as R

    shared = checked.sparkSession.sparkContext.broadcast(np.asarray(centroids, np.float32))
    dim = centroids.shape[1]
    m = min(top_m, len(centroids))
    out_schema = T.StructType([
        T.StructField("uid", T.StringType(), False),
        T.StructField("cluster_id", T.IntegerType(), True),
        T.StructField("distance", T.FloatType(), True),
        T.StructField("top_clusters", T.ArrayType(T.IntegerType(), False), True),
        T.StructField("top_distances", T.ArrayType(T.FloatType(), False), True),
        T.StructField("_detail", T.StringType(), True),
    ])
    arrow_schema = pa.schema([
        pa.field("uid", pa.string(), False), pa.field("cluster_id", pa.int32()), pa.field("distance", pa.float32()),
        pa.field("top_clusters", pa.list_(pa.field("element", pa.int32(), False))),
        pa.field("top_distances", pa.list_(pa.field("element", pa.float32(), False))),
        pa.field("_detail", pa.string()),
    ])

    def run(batches):
        c = shared.value
        for batch in batches:
            detail = batch.column("_detail")
            valid = pc.is_null(detail).to_numpy(zero_copy_only=False)
            nv = int(valid.sum())
            ids = np.zeros((len(valid), m), np.int32)
            dist = np.zeros((len(valid), m), np.float32)
            if nv:
                emb = pc.filter(batch.column("_emb"), pa.array(valid))
                x = pc.list_flatten(emb).to_numpy(zero_copy_only=False).reshape(nv, dim)
                ids[valid], dist[valid] = assign(x, c, m, spherical)
            invalid = ~valid
            offsets = pa.array(np.arange(len(valid) + 1, dtype=np.int32) * m)
            yield pa.RecordBatch.from_arrays(
                [
                    batch.column("uid"),
                    pa.array(ids[:, 0], pa.int32(), mask=invalid),
                    pa.array(dist[:, 0], pa.float32(), mask=invalid),
                    pa.ListArray.from_arrays(offsets, pa.array(ids.ravel(), pa.int32()), mask=pa.array(invalid)).cast(arrow_schema.field("top_clusters").type),
                    pa.ListArray.from_arrays(offsets, pa.array(dist.ravel(), pa.float32()), mask=pa.array(invalid)).cast(arrow_schema.field("top_distances").type),
                    detail,
                ],
                schema=arrow_schema,
            )

    out = checked.select("uid", "_emb", "_detail").mapInArrow(run, out_schema)
    return out.withColumn("_reason", F.when(F.col("_detail").isNotNull(), F.lit(R.INVALID_EMBEDDING)))


# --- stage runner -----------------------------------------------------------------------------


def run(ctx: Context) -> Output:
    """Train k-means on a sample of the input's embeddings and assign every row: `<run>/cluster`.

    Input: a run folder (its embed stage output) or any Parquet with `uid` and the embedding
    column. Output data: uid, cluster_id, distance, top_clusters, top_distances; centroids.npy
    beside it; invalid embeddings go to the ledger as invalid_embedding.
    """
    from pyspark.sql import functions as F

    from pipeline.core.contracts import require_columns, select_contract

    c: ClusterConfig = ctx.cfg
    require_faiss()
    source = ctx.input().path
    df = ctx.spark.read.parquet(source)
    require_columns(df, ("uid", c.embedding_col), STAGE_NAME)
    dim = c.dim or embedding_dimension(df, c.embedding_col)
    checked = with_embedding_check(df.select("uid", c.embedding_col), c.embedding_col, dim).select("uid", "_emb", "_detail")
    valid = checked.where(F.col("_detail").isNull())
    sample_n = c.k * c.sample_per_centroid
    t0 = time.time()
    x, _ = sample_embeddings(valid, ctx.seed, sample_n, dim)
    log.info("cluster: sampled %d of at most %d points (dim %d) in %.1fs", len(x), sample_n, dim, time.time() - t0)
    t0 = time.time()
    trained = train_kmeans(x, c.k, c.niter, ctx.seed, c.spherical)
    train_s = time.time() - t0
    log.info("cluster: k-means k=%d on %d points in %.1fs (gpu=%s)", c.k, len(x), train_s, trained["gpu"])
    return Output(
        decided=with_cluster_assignments(checked, trained["centroids"], c.top_m, c.spherical),
        shape=lambda kept: select_contract(kept, "cluster"),
        files={"centroids.npy": centroids_bytes(trained["centroids"])},
        stats={
            "input": source,
            "embedding_col": c.embedding_col,
            "k": c.k,
            "dim": dim,
            "spherical": c.spherical,
            "distance": "cosine (1 - cos)" if c.spherical else "squared L2",
            "top_m": min(c.top_m, c.k),
            "sample_size": len(x),
            "sample_per_centroid": c.sample_per_centroid,
            "niter": c.niter,
            "seed": ctx.seed,
            "faiss_objective": trained["faiss_objective"],
            "sample_sse": trained["sse"],
            "faiss_version": trained["faiss_version"],
            "gpu": trained["gpu"],
            "train_seconds": round(train_s, 3),
        },
    )


STAGE = Stage(
    name="cluster",
    config=ClusterConfig,
    run=run,
    help="FAISS k-means on a sample, then every embedding assigned to its nearest centroids",
    inputs=(Input("input", ("embed",), "a run folder (its embed output) or Parquet with uid and an embedding column"),),
    schemas={"data": "cluster"},
    seeded=True,
)
