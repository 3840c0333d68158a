"""Prune stage: SemDeDup, then density-based pruning (DBP), then a per-cluster cap; each optional.

All three keep members farthest from their centroid first, in one order per cluster: distance
to the centroid descending, ties by uid ascending (`rank` 0 = farthest).

- SemDeDup (`dedup_eps`): member j is dropped (semantic_duplicate) when its maximum cosine
  similarity to the members before it, removed ones included, exceeds 1 - eps. The per-member
  maxima are kept in `<run>/prune/similarity`, so `--similarity RUN --dedup-eps E` applies
  another eps without touching the embeddings. Kernel: pipeline/kernels/semdedup.py.
- DBP (`keep_fraction`): over SemDeDup's survivors. n_j = survivors of cluster j; d_intra(j) =
  their mean distance to centroid j (cosine: it needs spherical clusters); d_inter over all
  centroids; N' = round(keep_fraction * sum n_j); the quota x_j of pipeline/kernels/dbp.py keeps the
  x_j farthest survivors, the rest are density_pruned.
- Cap (`max_per_cluster`): of what DBP kept, at most M per cluster (the farthest);
  the rest are cluster_capped.

Because every step keeps a prefix of the same order, the survivors' position (`survivor
rank`) decides DBP and the cap together: kept iff position <= min(quota_j, M).
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
from pipeline.core.protocol import Context, Input, Output, Plan, Stage


@dataclass(frozen=True)
class PruneConfig:
    """Every step is optional (None = off)."""

    # SemDeDup: drop a member whose max cosine similarity to earlier members exceeds 1 - eps.
    dedup_eps: float | None = None
    # DBP: keep this fraction of SemDeDup's survivors, spread by cluster complexity.
    keep_fraction: float | None = None
    # DBP: softmax temperature tau over cluster complexities.
    temperature: float = 0.5
    # DBP: nearest other centroids averaged in d_inter.
    inter_k: int = 20
    # DBP: lower bound lb_j = min(floor_ratio * N'/K, n_j - 1) members per cluster.
    floor_ratio: float = 0.0
    # Cluster balancing: keep at most this many members per cluster (the farthest).
    max_per_cluster: int | None = None
    # SemDeDup similarity blocks: block_size x block_size float32 per matmul.
    block_size: int = 4096
    # A previous prune's similarity table (a run, a prune folder or the table): re-threshold it
    # with dedup_eps instead of recomputing similarities.
    similarity: str | None = None

    def validate(self, where: str) -> None:
        if self.dedup_eps is not None and not 0.0 <= self.dedup_eps < 1.0:
            raise ConfigError(f"{where}.dedup_eps: must be in [0, 1), got {self.dedup_eps}")
        if self.keep_fraction is not None and not 0.0 < self.keep_fraction <= 1.0:
            raise ConfigError(f"{where}.keep_fraction: must be in (0, 1], got {self.keep_fraction}")
        if self.temperature <= 0:
            raise ConfigError(f"{where}.temperature: must be > 0, got {self.temperature}")
        if self.inter_k < 1:
            raise ConfigError(f"{where}.inter_k: must be >= 1, got {self.inter_k}")
        if not 0.0 <= self.floor_ratio <= 1.0:
            raise ConfigError(f"{where}.floor_ratio: must be in [0, 1], got {self.floor_ratio}")
        if self.max_per_cluster is not None and self.max_per_cluster < 1:
            raise ConfigError(f"{where}.max_per_cluster: must be >= 1, got {self.max_per_cluster}")
        if self.block_size < 1:
            raise ConfigError(f"{where}.block_size: must be >= 1, got {self.block_size}")
        if self.similarity is not None and self.dedup_eps is None:
            raise ConfigError(f"{where}.similarity: re-thresholding a similarity table needs dedup_eps")


log = logging.getLogger(__name__)
STAGE_NAME = "prune"
SIMILARITY_COLUMNS = ("uid", "cluster_id", "rank", "max_sim_earlier", "most_similar_uid")


class PruneError(UserError):
    """The prune inputs or settings cannot work together."""


# --- Spark adapters -----------------------------------------------------------------------------


def with_similarity(members, dim: int, block_size: int, eps: float, walk: bool = False):
    """Needs uid, cluster_id, distance and _emb (array<float> or binary float32, unchecked); other
    columns pass through.

    Per cluster, adds rank, max_sim_earlier, most_similar_uid, _detail (why the embedding cannot
    be used, null when it can: checked in numpy, embedding_problems) and _position (SemDeDup
    survivors at this eps up to and including the member, in rank order); drops _emb. For invalid
    rows only _detail is set.

    `walk`: the members are a clustered cluster output read one file per task (each cluster whole
    and contiguous in one file): one `mapInArrow` walks each partition's clusters in order, with no
    shuffle. Otherwise one `groupBy("cluster_id").applyInArrow` call per cluster, behind a shuffle.
    (Walking the partitions of a shuffle measured the same as applyInArrow, 16.1 vs 16.3 s at 1M
    and k=1000: what costs is the shuffle, not Spark 4's per-group machinery.) Memory: one
    cluster's n_j x dim floats plus one block_size x block_size block (and, walking, one batch).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyspark.sql import types as T
    from pyspark.sql.pandas.types import to_arrow_schema

    from pipeline.kernels.kmeans import embedding_problems
    from pipeline.kernels.semdedup import dedup_cluster, semantic_duplicates

    out_schema = T.StructType(
        [f for f in members.schema.fields if f.name != "_emb"]
        + [
            T.StructField("rank", T.LongType(), True),
            T.StructField("max_sim_earlier", T.FloatType(), True),
            T.StructField("most_similar_uid", T.StringType(), True),
            T.StructField("_detail", T.StringType(), True),
            T.StructField("_position", T.LongType(), True),
        ]
    )
    arrow_schema = to_arrow_schema(out_schema)

    def per_cluster(table: pa.Table) -> pa.Table:
        valid, why, x = embedding_problems(table.column("_emb"), dim)
        body = table.drop_columns(["_emb"])
        good = body.filter(pa.array(valid))
        uids = good.column("uid").combine_chunks() if good.num_rows else pa.array([], pa.string())
        r = dedup_cluster(uids.to_numpy(zero_copy_only=False), good.column("distance").to_numpy(), x, block_size)
        sim, most = r["max_sim_earlier"], r["most_similar"]
        position = np.cumsum(~semantic_duplicates(sim, eps))
        out = good.take(pa.array(r["index"], pa.int64()))
        for name, column in (
            ("rank", pa.array(r["rank"], pa.int64())),
            ("max_sim_earlier", pa.array(sim, pa.float32(), mask=np.isnan(sim))),
            ("most_similar_uid", pc.take(uids, pa.array(np.maximum(most, 0), pa.int64(), mask=most < 0))),
            ("_detail", pa.nulls(out.num_rows, pa.string())),
            ("_position", pa.array(position, pa.int64())),
        ):
            out = out.append_column(name, column)
        parts = [out.cast(arrow_schema)]
        if not valid.all():
            bad = body.filter(pa.array(~valid))
            for name in ("rank", "max_sim_earlier", "most_similar_uid"):
                bad = bad.append_column(name, pa.nulls(bad.num_rows, arrow_schema.field(name).type))
            bad = bad.append_column("_detail", pa.array([why[i] for i in np.flatnonzero(~valid)], pa.string()))
            parts.append(bad.append_column("_position", pa.nulls(bad.num_rows, pa.int64())).cast(arrow_schema))
        return pa.concat_tables(parts)

    if not walk:
        return members.groupBy("cluster_id").applyInArrow(per_cluster, out_schema)

    def walk_partition(batches):
        """Each run of one cluster_id is a cluster. (A cluster found in two runs or two files gets
        two rank 0s: cluster_survivors refuses that.)"""
        pending: list = []
        current = None
        for batch in batches:
            if not batch.num_rows:
                continue
            cid = batch.column("cluster_id").to_numpy(zero_copy_only=False)
            starts = np.concatenate([[0], np.flatnonzero(cid[1:] != cid[:-1]) + 1])
            for a, b in zip(starts, [*starts[1:], len(cid)], strict=True):
                if cid[a] != current and pending:
                    yield from per_cluster(pa.Table.from_batches(pending)).to_batches()
                    pending = []
                current = cid[a]
                pending.append(batch.slice(a, b - a))
        if pending:
            yield from per_cluster(pa.Table.from_batches(pending)).to_batches()

    return members.mapInArrow(walk_partition, out_schema)


def with_rank(members):
    """Needs uid, cluster_id, distance. Adds rank (farthest first, ties by uid) and null similarities."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("cluster_id").orderBy(F.desc("distance"), F.asc("uid"))
    return (
        members.withColumn("rank", (F.row_number().over(w) - 1).cast("long"))
        .withColumn("max_sim_earlier", F.lit(None).cast("float"))
        .withColumn("most_similar_uid", F.lit(None).cast("string"))
    )


def rethreshold(similarity, eps: float):
    """A stored similarity table re-thresholded: uid, cluster_id, rank, is_duplicate at this eps."""
    from pyspark.sql import functions as F

    dup = F.coalesce(F.col("max_sim_earlier").cast("double") > F.lit(1.0 - eps), F.lit(False))
    return similarity.select("uid", "cluster_id", "rank", dup.alias("is_duplicate"))


def similarity_table_path(run, path: str) -> str:
    """A run folder, a prune stage folder or the similarity table itself -> the table's path."""
    from pipeline.core.folder import MARKER

    path = path.rstrip("/")
    if run.fs.exists(f"{path}/{STAGE_NAME}/{MARKER}"):
        path = f"{path}/{STAGE_NAME}"
    if run.fs.exists(f"{path}/{MARKER}"):
        if not run.fs.exists(f"{path}/similarity"):
            raise PruneError(f"{path} has no similarity table: that prune ran without SemDeDup")
        return f"{path}/similarity"
    if not run.fs.exists(path):
        raise FileNotFoundError(f"similarity table not found: {path}")
    return path


def cluster_survivors(members) -> list:
    """Rows of (cluster_id, size = valid members, n = SemDeDup survivors, dsum = their distances' sum).

    The distance sum is a decimal sum: exact, so d_intra does not depend on the partitioning.
    Raises when a cluster was ranked in more than one piece (more than one rank 0): its
    similarities would miss pairs across the pieces.
    """
    from pyspark.sql import functions as F

    surv = F.col("_survivor")
    rows = (
        members.groupBy("cluster_id")
        .agg(
            F.sum(F.col("_valid").cast("long")).alias("size"),
            F.sum(surv.cast("long")).alias("n"),
            F.sum(F.when(surv, F.col("distance").cast("decimal(18,12)"))).alias("dsum"),
            F.sum((F.col("rank") == 0).cast("long")).alias("heads"),
        )
        .collect()
    )
    split = sorted(int(r["cluster_id"]) for r in rows if (r["heads"] or 0) > 1)
    if split:
        raise PruneError(
            f"prune: clusters {split[:5]} were read in more than one piece; their cluster output is not "
            "clustered one cluster per file (rerun cluster, or run it with --no-carry-input)"
        )
    return rows


def _survivor_flags(members, eps: float | None):
    from pyspark.sql import functions as F

    valid = F.col("_detail").isNull()
    dup = F.lit(False) if eps is None else F.coalesce(F.col("max_sim_earlier").cast("double") > F.lit(1.0 - eps), F.lit(False))
    return members.withColumn("_valid", valid).withColumn("_dup", valid & dup).withColumn("_survivor", valid & ~dup)


def with_prune_decisions(members, limits, eps: float | None, max_per_cluster: int | None):
    """Needs the members (with _valid, _dup, _survivor, rank; _position when known) and limits
    (cluster_id, quota, limit, n).

    Adds _reason and _detail: invalid_embedding, semantic_duplicate, density_pruned, cluster_capped.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from pipeline.core import reasons as R

    pos = F.col("_position")
    if "_position" not in members.columns:  # (with_similarity computes it per cluster already)
        w = Window.partitionBy("cluster_id").orderBy("rank").rowsBetween(Window.unboundedPreceding, Window.currentRow)
        members = members.withColumn("_position", F.sum(F.col("_survivor").cast("long")).over(w))
    df = members.join(F.broadcast(limits), on="cluster_id", how="left")
    reason = (
        F.when(~F.col("_valid"), F.lit(R.INVALID_EMBEDDING))
        .when(F.col("_dup"), F.lit(R.SEMANTIC_DUPLICATE))
        .when(pos > F.col("_quota"), F.lit(R.DENSITY_PRUNED))
        .when(pos > F.col("_limit"), F.lit(R.CLUSTER_CAPPED))
    )
    detail = (
        F.when(~F.col("_valid"), F.col("_detail"))
        .when(F.col("_dup"), F.format_string("duplicate of %s (cos=%.3f)", F.col("most_similar_uid"), F.col("max_sim_earlier")))
        .when(pos > F.col("_quota"), F.format_string("cluster %d: DBP quota %d of %d survivors, position %d", F.col("cluster_id"), F.col("_quota"), F.col("_n"), pos))
        .when(pos > F.col("_limit"), F.format_string(f"cluster %d: cap {max_per_cluster}, position %d", F.col("cluster_id"), pos))
    )
    return df.withColumn("_reason", reason).withColumn("_detail", detail)


# Spark reads each file of a clustered cluster output whole, in one task: no file split into
# pieces (a split's size would be at most maxPartitionBytes) and no two files packed into one
# task (each file counts openCostInBytes). 1 TiB is beyond any one file.
ONE_FILE_PER_TASK = {"spark.sql.files.maxPartitionBytes": str(1 << 40), "spark.sql.files.openCostInBytes": str(1 << 40)}


def reads_clustered(ctx: Context, cstats: dict[str, Any], clusters, needed: list[str]) -> bool:
    """Whether the cluster output holds this input's rows, clustered (cluster's carry_input), with
    the `needed` columns: then prune reads it alone. Same input: same qualified path and, for a
    stage output, the same marker (fingerprint and time)."""
    from pipeline.stages.cluster import input_identity

    return (
        cstats.get("clustered_by") == "cluster_id"
        and cstats.get("input_identity") == input_identity(ctx)
        and all(c in clusters.columns for c in needed)
    )


# --- stage runner -----------------------------------------------------------------------------


def _cluster_stats_bytes(table: dict[str, Any]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.core.contracts import contract_columns

    types = {"int32": pa.int32(), "int64": pa.int64(), "float64": pa.float64()}
    fields = [pa.field(c["name"], types[c["type"]], c["nullable"]) for c in contract_columns("cluster_stats")]
    arrays = []
    for f in fields:
        v = np.asarray(table[f.name])
        mask = np.isnan(v) if v.dtype.kind == "f" else None
        if mask is not None and pa.types.is_integer(f.type):
            v = np.nan_to_num(v).astype(np.int64)
        arrays.append(pa.array(v, f.type, mask=mask))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_arrays(arrays, schema=pa.schema(fields)), buf, compression="zstd")
    return buf.getvalue()


def plan(ctx: Context) -> Plan:
    """The cluster stage's output must carry centroids; an earlier similarity table is an input too."""
    p: PruneConfig = ctx.cfg
    run = ctx.run
    clusters = ctx.input("clusters")
    if clusters.dir is None or not run.fs.exists(f"{clusters.dir}/centroids.npy"):
        raise PruneError(f"{clusters.given}: not a cluster stage output (no centroids.npy)")
    cstats = run.fs.read_json(f"{clusters.dir}/stats.json")
    if p.keep_fraction is not None and not cstats.get("spherical", True):
        raise PruneError("prune: DBP uses cosine distances to the centroid; recluster with --spherical")
    sim_source = similarity_table_path(run, p.similarity) if p.similarity else None
    ctx.state.update(cstats=cstats, sim_source=sim_source)
    return Plan(fingerprint={"similarity": run.fs.qualify(sim_source) if sim_source else None})


def run(ctx: Context) -> Output:
    """SemDeDup, DBP and the per-cluster cap over the cluster stage's members: `<run>/prune`.

    `input`: a run folder (its embed output) or Parquet with uid and the embedding column
    (needed only when SemDeDup computes similarities; its scalar columns are carried to the output).
    `clusters`: a run folder or cluster stage folder (default: the run folder).
    """
    from pyspark.sql import functions as F

    from pipeline.core.contracts import require_columns, select_contract
    from pipeline.core.folder import sql_conf
    from pipeline.kernels.dbp import dbp_quotas, inter_cluster_distance, kept_total
    from pipeline.stages.cluster import blob_column, load_centroids, scalar_columns

    p: PruneConfig = ctx.cfg
    spark, run = ctx.spark, ctx.run
    cluster_dir, cluster_source = ctx.input("clusters").dir, ctx.input("clusters").path
    embed_source = ctx.input().path
    cstats, sim_source = ctx.state["cstats"], ctx.state["sim_source"]
    compute_sim = p.dedup_eps is not None and p.similarity is None
    centroids = load_centroids(run.fs, f"{cluster_dir}/centroids.npy")
    emb_col = cstats.get("embedding_col", "image_embedding")
    clusters = spark.read.parquet(cluster_source)
    require_columns(clusters, ("uid", "cluster_id", "distance"), STAGE_NAME)
    embed = spark.read.parquet(embed_source)
    require_columns(embed, ("uid", emb_col) if compute_sim else ("uid",), STAGE_NAME)
    extras = scalar_columns(embed, {"uid", "cluster_id", "distance", "rank", "max_sim_earlier", "most_similar_uid"})
    dim = centroids.shape[1]
    blob = blob_column(emb_col)
    walk = compute_sim and reads_clustered(ctx, cstats, clusters, [blob, *extras])
    if walk:
        # The cluster stage wrote this input's rows clustered: no join, no shuffle.
        members = with_similarity(
            clusters.select("uid", "cluster_id", "distance", *extras, F.col(blob).alias("_emb")),
            dim, p.block_size, p.dedup_eps, walk=True,
        )
    else:
        emb = [F.col(emb_col).cast("array<float>").alias("_emb")] if compute_sim else []
        members = clusters.select("uid", "cluster_id", "distance").join(embed.select("uid", *extras, *emb), on="uid", how="left")
        if compute_sim:
            members = with_similarity(members, dim, p.block_size, p.dedup_eps)
        elif sim_source:
            stored = spark.read.parquet(sim_source)
            require_columns(stored, SIMILARITY_COLUMNS, "prune --similarity")
            members = members.join(
                stored.select("uid", F.col("cluster_id").alias("_stored_cluster"), "rank", "max_sim_earlier", "most_similar_uid"),
                on="uid", how="left",
            ).withColumn("_detail", F.lit(None).cast("string"))
        else:
            members = with_rank(members).withColumn("_detail", F.lit(None).cast("string"))

    tmp = ctx.scratch("members")
    t0 = time.time()
    with sql_conf(spark, ONE_FILE_PER_TASK if walk else {}):
        members.write.parquet(tmp)  # the expensive per-cluster work, done once
    members = spark.read.parquet(tmp)
    log.info("prune: per-cluster similarities in %.1fs (%s)", time.time() - t0, "clustered cluster output" if walk else "joined")
    if sim_source:
        bad = members.where(F.col("rank").isNull() | (F.col("_stored_cluster") != F.col("cluster_id"))).count()
        if bad:
            raise PruneError(
                f"prune --similarity {p.similarity}: {bad} members are missing or in another cluster there; "
                "it was computed on other clusters: run without --similarity"
            )
        members = members.drop("_stored_cluster")
    members = _survivor_flags(members, p.dedup_eps)
    k = len(centroids)
    size = np.zeros(k, np.int64)
    n = np.zeros(k, np.int64)
    d_intra = np.full(k, np.nan)
    for r in cluster_survivors(members):
        cid = int(r["cluster_id"])
        size[cid], n[cid] = int(r["size"] or 0), int(r["n"] or 0)
        if n[cid]:
            d_intra[cid] = float(r["dsum"]) / n[cid]
    d_inter = inter_cluster_distance(centroids, p.inter_k)
    complexity = d_inter * d_intra
    probability = np.full(k, np.nan)
    extra: dict[str, Any] = {}
    if p.keep_fraction is not None:
        q = dbp_quotas(n, np.nan_to_num(d_intra), d_inter, p.keep_fraction, p.temperature, p.floor_ratio)
        quota = q["quota"]
        probability = np.where(n > 0, q["p"], np.nan)
        extra = {"dbp_keep_total": q["keep_total"], "dbp_nu": q["nu"]}
    else:
        quota = n.copy()
    limit = np.minimum(quota, p.max_per_cluster) if p.max_per_cluster else quota
    limits = spark.createDataFrame(
        [(i, int(quota[i]), int(limit[i]), int(n[i])) for i in range(k)],
        "cluster_id int, _quota long, _limit long, _n long",
    )
    # Only what the data and the ledger take. With each cluster's _position known from the
    # scratch table the decided rows are that table read with a broadcast join: the two writes
    # each compute them, cheaper than caching them (caching the seven columns cost 5.4 s against
    # 2.9 s at 1M rows). Without it _position is a window over the clusters: cached.
    recompute = "_position" in members.columns
    decided = with_prune_decisions(members, limits, p.dedup_eps, p.max_per_cluster).select(
        "uid", "cluster_id", "distance", "rank", *extras, "_reason", "_detail"
    )
    stats_table = {
        "cluster": np.arange(k), "size": size, "d_intra": d_intra, "d_inter": d_inter, "complexity": complexity,
        "probability": probability, "quota": quota.astype(np.float64) if p.keep_fraction is not None else np.full(k, np.nan),
        "kept_after_dedup": n, "kept_after_dbp": quota, "kept_after_cap": limit,
    }
    tables = {}
    if p.dedup_eps is not None:
        tables["similarity"] = select_contract(members.where(F.col("_valid")), "prune_similarity")
    return Output(
        decided=decided,
        shape=lambda kept: select_contract(kept, "prune", extra=extras),
        tables=tables,
        cache=not recompute,
        files={"cluster_stats.parquet": _cluster_stats_bytes(stats_table)},
        stats={
            "input": embed_source,
            "clusters": cluster_source,
            "similarity_from": sim_source,
            "k": k,
            "dedup_eps": p.dedup_eps,
            "keep_fraction": p.keep_fraction,
            "temperature": p.temperature,
            "inter_k": p.inter_k,
            "floor_ratio": p.floor_ratio,
            "max_per_cluster": p.max_per_cluster,
            "block_size": p.block_size,
            "members_from": "clustered cluster output" if walk else "cluster output joined to the input",
            "members": int(size.sum()),
            "after_dedup": int(n.sum()),
            "after_dbp": int(quota.sum()),
            "after_cap": int(limit.sum()),
            **({"dbp_expected_keep_total": kept_total(int(n.sum()), p.keep_fraction)} if p.keep_fraction is not None else {}),
            **extra,
        },
    )


STAGE = Stage(
    name="prune",
    config=PruneConfig,
    run=run,
    plan=plan,
    help="SemDeDup, density-based pruning and a per-cluster cap over clustered embeddings",
    inputs=(
        Input("input", ("filter", "embed"), "a run folder (its filter output, else its embed output) or Parquet with uid and the embedding column"),
        Input("clusters", ("cluster",), "a run folder or a cluster stage folder"),
    ),
    schemas={"data": "prune", "similarity": "prune_similarity"},
)
