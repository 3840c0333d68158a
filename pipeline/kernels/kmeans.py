"""k-means and assignment, Spark-free: FAISS training and the exact top-m nearest centroids (numpy)."""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np

from pipeline.core.errors import UserError

log = logging.getLogger(__name__)


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


def smallest(score: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `n` smallest scores of each row, by repeated argmin: (ids, the n-th smallest, crowded rows).

    n + 1 passes of argmin cost about a fifth of one argpartition over the row at k = 1000. A
    row is crowded when the (n+1)-th smallest equals the n-th: more centroids tie at the cut
    than were taken, and the caller re-ranks all of them. `score` is overwritten.
    """
    rows = np.arange(len(score))
    ids = np.empty((len(score), n), np.int64)
    cut = np.empty(len(score), score.dtype)
    for j in range(n + 1):
        i = score.argmin(axis=1)
        if j == n:
            return ids, cut, np.flatnonzero(score[rows, i] == cut)
        ids[:, j], cut = i, score[rows, i]
        score[rows, i] = np.inf
    raise AssertionError("unreachable")


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
        def scores(xs: np.ndarray) -> np.ndarray:
            return -(xs @ c.T) if spherical else cc - 2.0 * (xs @ c.T)

        score = scores(xb)
        rows = np.arange(len(xb))[:, None]
        if cand < k:
            ids, cut, crowded = smallest(score, cand)
        else:
            ids = np.tile(np.arange(k), (len(xb), 1))
            crowded = ()
        dist = exact_distances(xb, c, ids, spherical)
        order = np.lexsort((ids, dist), axis=1)[:, :m]
        ids_out[s : s + step] = ids[rows, order]
        dist_out[s : s + step] = dist[rows, order]
        for r in crowded:  # (their scores were overwritten by `smallest`: computed again)
            wide = np.flatnonzero(scores(xb[r : r + 1])[0] <= cut[r])[None, :]
            d = exact_distances(xb[r : r + 1], c, wide, spherical)
            pick = np.lexsort((wide, d), axis=1)[0, :m]
            ids_out[s + r] = wide[0, pick]
            dist_out[s + r] = d[0, pick]
    return ids_out, dist_out


def centroids_bytes(centroids: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(centroids, np.float32), allow_pickle=False)
    return buf.getvalue()


def embedding_problems(emb, dim: int) -> tuple[np.ndarray, list[str | None], np.ndarray]:
    """Check an Arrow column of embeddings: (valid mask, why each row is not, valid rows as float32).

    The column is list<float> (or list<double>), or binary holding little-endian float32 values
    (float32_blobs). A row cannot be used when it is null, has another length than `dim`, holds a
    null value, a NaN or an infinite value, or is all zeros (its direction is undefined).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(emb, pa.ChunkedArray):
        emb = emb.combine_chunks() if emb.num_chunks else pa.array([], emb.type)
    n = len(emb)
    whole = _whole_rows(emb, dim)
    if whole is not None:  # the common case, in a few vector passes: every row there, dim values
        ok = np.isfinite(whole).all(axis=1) & (whole != 0).any(axis=1)
        if ok.all():
            return ok, [None] * n, whole
    missing = emb.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_binary(emb.type) or pa.types.is_large_binary(emb.type):
        nbytes = pc.binary_length(emb).fill_null(0).to_numpy(zero_copy_only=False)
        lengths = np.where(nbytes % 4 == 0, nbytes // 4, -1)
        has_hole = np.zeros(n, bool)
        flat, parents = _blob_values(emb, nbytes, missing | (lengths != dim), dim)
    else:
        lengths = pc.list_value_length(emb).fill_null(0).to_numpy(zero_copy_only=False)
        values = pc.list_flatten(emb)
        parents = pc.list_parent_indices(emb).to_numpy(zero_copy_only=False)
        holes = values.is_null().to_numpy(zero_copy_only=False)
        has_hole = np.zeros(n, bool)
        has_hole[parents[holes]] = True
        flat = values.fill_null(0.0).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        sq = np.bincount(parents, weights=np.square(flat.astype(np.float64)), minlength=n)
    detail: list[str | None] = [None] * n
    bad = missing | (lengths != dim) | has_hole | ~np.isfinite(sq) | (sq == 0)
    for i in np.flatnonzero(bad):
        if missing[i]:
            detail[i] = "no embedding"
        elif lengths[i] != dim:
            detail[i] = f"dimension {lengths[i]}, expected {dim}" if lengths[i] >= 0 else f"{nbytes[i]} bytes, not float32 values"
        elif has_hole[i]:
            detail[i] = "null value"
        elif not np.isfinite(sq[i]):
            detail[i] = "NaN or infinite value"
        else:
            detail[i] = "zero vector"
    valid = ~bad
    return valid, detail, flat[valid[parents]].reshape(int(valid.sum()), dim)


def _whole_rows(emb, dim: int) -> np.ndarray | None:
    """The column as an (n, dim) float32 matrix when no row is null or of another length and no
    value is null (a view where the values are float32 already), else None."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if emb.null_count:
        return None
    n = len(emb)
    if pa.types.is_binary(emb.type) or pa.types.is_large_binary(emb.type):
        offsets, data = _binary_buffers(emb)
        if n and not (np.diff(offsets) == dim * 4).all():
            return None
        return data[offsets[0] : offsets[0] + n * dim * 4].view("<f4").astype(np.float32, copy=False).reshape(n, dim)
    lengths = pc.list_value_length(emb).to_numpy(zero_copy_only=False)
    if n and not (lengths == dim).all():
        return None
    values = pc.list_flatten(emb)
    if values.null_count:
        return None
    return values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, dim)


def _binary_buffers(emb) -> tuple[np.ndarray, np.ndarray]:
    """A binary column's row offsets (as int64, len + 1) and its data bytes (a view of its buffer)."""
    import pyarrow as pa

    width = np.int64 if pa.types.is_large_binary(emb.type) else np.int32
    offsets = np.frombuffer(emb.buffers()[1], width)[emb.offset : emb.offset + len(emb) + 1].astype(np.int64, copy=False)
    data = np.frombuffer(emb.buffers()[2], np.uint8) if emb.buffers()[2] is not None else np.zeros(0, np.uint8)
    return offsets, data


def _blob_values(emb, nbytes: np.ndarray, skip: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The float32 values of a binary column's rows of `dim` values (others skipped), and each value's row."""
    offsets, data = _binary_buffers(emb)
    rows = np.flatnonzero(~skip)
    if len(rows) == len(emb) and (len(rows) == 0 or offsets[-1] - offsets[0] == len(rows) * dim * 4):
        flat = data[offsets[0] : offsets[-1]].view("<f4")  # every row whole and back to back: a view
    else:
        flat = data[(offsets[rows, None] + np.arange(dim * 4)).ravel()].view("<f4")
    return flat.astype(np.float32, copy=False), np.repeat(rows, dim)


def float32_blobs(x: np.ndarray, valid: np.ndarray):
    """The rows of `x` (one per True of `valid`, in order) as an Arrow binary column of dim
    little-endian float32 values each, null where `valid` is False."""
    import pyarrow as pa

    x = np.ascontiguousarray(x, "<f4")
    width = x.shape[1] * 4 if x.ndim == 2 else 0
    offsets = np.zeros(len(valid) + 1, np.int32)
    np.cumsum(np.where(valid, width, 0), out=offsets[1:])
    mask = None if valid.all() else pa.array(valid).buffers()[1]
    return pa.Array.from_buffers(pa.binary(), len(valid), [mask, pa.py_buffer(offsets), pa.py_buffer(x)], null_count=int((~valid).sum()))
