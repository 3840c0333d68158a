"""The cluster and prune stages against their kernels alone: same data, one process, one Spark session.

On seeded embeddings written as the embed stage writes them (uid, image_embedding list<float32>,
text; bench_cluster_prune_scale.write_pool, planted near duplicates):

  stage        the stage as a user runs it, `api.run_cluster(spark, input, run_root, cfg, force=True)`
               and `api.run_prune(spark, input, clusters, run_root, cfg, force=True)`: the first call
               of that stage in this session (cold) and the best of --repeat later ones (warm).
               Cluster runs first, so only its cold call also pays for the session's first Python
               workers.
  kernel-only  the same work in this process without Spark: pyarrow reads the Parquet into numpy
               float32, the kernels run (pipeline.kernels.kmeans, semdedup, dbp), pyarrow writes the
               outputs (zstd, as the stages write).
                 cluster: the validity check, the sample (the k x sample_per_centroid rows with the
                 smallest xxhash64(seed, uid), ties by uid), train_kmeans, assign over every row,
                 write uid, cluster_id, distance, top_clusters, top_distances and centroids; with
                 carry_input (the stage's default) also the embedding as binary float32 and the
                 text, the rows sorted by cluster, as the stage writes them.
                 prune: read the stage's cluster output (with carry_input: the embeddings are in it;
                 --no-carry: read them from the pool and match them to the members by uid), group
                 rows by cluster in numpy, dedup_cluster per cluster, DBP quotas (and the cap when
                 set), write the kept rows (uid, cluster_id, distance, rank, text).
               The best of --repeat runs counts.
  ratio        kernel-only / stage, warm (and cold): 1.0 would be a stage costing nothing beyond
               its kernels. The kernel-only runs use one process (numpy's BLAS may use both cores
               in matmuls); the stages run on local[2]. When --prune-k equals --k the sum of the
               two stages is compared too (it does not depend on which stage writes the copy).

The sample key is Spark's xxhash64 computed with the `xxhash` package when it is installed, so the
kernel trains on the stage's points in the stage's order, and the line after the ratio says how many
rows got the stage's cluster; without the package a seeded numpy hash of the row number stands in
(the same selection cost, other rows; the line says so). The kernel-only prune reads the stage's own
cluster output and checks that it keeps the same uids. Not in kernel-only: the stage's ledger,
similarity table, stats and markers (outputs a user gets from the stage, not kernel work).

--scale runs cluster + prune at several pool sizes in one session (after an untimed warm-up):
time, time and CPU seconds per million rows, SemDeDup's pairs (sum over clusters of n_j (n_j - 1) / 2:
at a fixed k they grow as N^2 / k, so prune's time per row grows with N) and the peak RSS of the
driver JVM, the Python workers and this process.

    .venv/bin/python bench/bench_stage_vs_kernel.py                 # 200k x 64, k=1000, prune on k=200
    .venv/bin/python bench/bench_stage_vs_kernel.py --n 1000000 --prune-k 1000 --repeat 2
    .venv/bin/python bench/bench_stage_vs_kernel.py --scale --sizes 1000000,3000000,10000000
    --jobs lists each warm call's Spark jobs (Spark UI's REST API on 127.0.0.1) and the stage's log.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import struct
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_cluster_prune_scale import write_pool  # noqa: E402
from procmem import PeakMemory  # noqa: E402

from pipeline.api import run_cluster, run_prune  # noqa: E402
from pipeline.core.config import SparkConfig  # noqa: E402
from pipeline.core.spark import get_spark  # noqa: E402
from pipeline.kernels.dbp import dbp_quotas, inter_cluster_distance  # noqa: E402
from pipeline.kernels.kmeans import (  # noqa: E402
    assign,
    centroids_bytes,
    embedding_problems,
    float32_blobs,
    train_kmeans,
)
from pipeline.kernels.semdedup import dedup_cluster, semantic_duplicates  # noqa: E402
from pipeline.registry import PipelineConfig  # noqa: E402
from pipeline.stages.cluster import ClusterConfig  # noqa: E402
from pipeline.stages.prune import PruneConfig  # noqa: E402

EMB = "image_embedding"


@dataclass
class Laps:
    """Named wall-clock laps of one kernel-only run."""

    t0: float = field(default_factory=time.perf_counter)
    laps: dict[str, float] = field(default_factory=dict)

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self.t0
        self.t0 = now

    @property
    def total(self) -> float:
        return sum(self.laps.values())

    def __str__(self) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in self.laps.items())


# --------------------------------------------------------------------------- kernel-only: shared


def read_matrix(path: str, columns: list[str]) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """The Parquet folder's columns, the embeddings as (n, dim) float32 and which rows are usable.

    The same rule as the cluster stage: dim is the most common length (ties: the smaller); a row
    is usable when its length is dim and its values are finite and not all zero.
    """
    table = pq.read_table(path, columns=columns)
    emb = table.column(EMB).combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(emb), 0).to_numpy()
    dim = int(np.bincount(lengths[lengths > 0]).argmax())
    usable = lengths == dim
    if usable.all():
        x = pc.list_flatten(emb).to_numpy().reshape(len(emb), dim)  # zero-copy: list<float32> values
    else:
        x = np.zeros((len(emb), dim), np.float32)
        x[usable] = pc.list_flatten(emb.filter(pa.array(usable))).to_numpy().reshape(-1, dim)
    usable &= np.isfinite(x).all(axis=1) & (x != 0).any(axis=1)
    return table, x, usable


def spark_xxhash64(uids: list[str], seed: int) -> np.ndarray | None:
    """Spark's xxhash64(lit(seed), uid) per uid (its seed 42, the literal hashed first), or None
    without the `xxhash` package. A literal that fits 32 bits is Spark's int: 4 bytes."""
    try:
        import xxhash
    except ImportError:
        return None
    lit = struct.pack("<i", seed) if -(2**31) <= seed < 2**31 else struct.pack("<q", seed)
    s = xxhash.xxh64_intdigest(lit, seed=42)
    h = xxhash.xxh64_intdigest
    return np.fromiter((h(u.encode(), seed=s) for u in uids), np.uint64, len(uids)).view(np.int64)


def standin_keys(n: int, seed: int) -> np.ndarray:
    """A seeded splitmix64 of the row number: a numpy key as cheap as a vectorised hash."""
    z = np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (z ^ (z >> np.uint64(31))).view(np.int64)


def smallest_keys(keys: np.ndarray, uids: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n smallest (key, uid), in that order: the cluster stage's sample rule."""
    if len(keys) > n:
        cut = np.partition(keys, n - 1)[n - 1]
        cand = np.flatnonzero(keys <= cut)  # all rows tied at the cut, then uid breaks the tie
    else:
        cand = np.arange(len(keys))
    return cand[np.lexsort((uids[cand], keys[cand]))[:n]]


# --------------------------------------------------------------------------- kernel-only: cluster


def kernel_cluster(pool: str, out: str, c: ClusterConfig, seed: int) -> tuple[Laps, dict]:
    """The cluster stage's work in numpy/FAISS/pyarrow: laps and facts for the report."""
    t = Laps()
    table, x, usable = read_matrix(pool, ["uid", EMB, "text"] if c.carry_input else ["uid", EMB])
    uids = table.column("uid").combine_chunks()
    if not usable.all():
        x, uids, table = x[usable], uids.filter(pa.array(usable)), table.filter(pa.array(usable))
    t.lap("read")
    uid_list = uids.to_pylist()
    keys = spark_xxhash64(uid_list, seed)
    exact = keys is not None
    if keys is None:
        keys = standin_keys(len(uid_list), seed)
    pick = smallest_keys(keys, np.asarray(uid_list), c.k * c.sample_per_centroid)
    sample = x[pick]
    t.lap("sample")
    trained = train_kmeans(sample, c.k, c.niter, seed, c.spherical)
    t.lap("train")
    ids, dist = assign(x, trained["centroids"], c.top_m, c.spherical)
    t.lap("assign")
    m = ids.shape[1]
    offsets = pa.array(np.arange(len(ids) + 1, dtype=np.int32) * m)
    columns = {
        "uid": uids,
        "cluster_id": ids[:, 0],
        "distance": dist[:, 0],
        "top_clusters": pa.ListArray.from_arrays(offsets, pa.array(ids.ravel())),
        "top_distances": pa.ListArray.from_arrays(offsets, pa.array(dist.ravel())),
    }
    if c.carry_input:  # as the stage writes it: the input's rows too, clustered by cluster_id
        columns[f"{EMB}_f32"] = float32_blobs(x, np.ones(len(x), bool))
        columns["text"] = table.column("text")
    out_table = pa.table(columns)
    if c.carry_input:
        out_table = out_table.take(pa.array(np.argsort(ids[:, 0], kind="stable")))
    os.makedirs(out)
    pq.write_table(out_table, f"{out}/part-0.parquet", compression="zstd")
    with open(f"{out}/centroids.npy", "wb") as fh:
        fh.write(centroids_bytes(trained["centroids"]))
    t.lap("write")
    return t, {"exact_sample": exact, "sample": len(pick), "uids": uids, "cluster_id": ids[:, 0]}


# --------------------------------------------------------------------------- kernel-only: prune


def kernel_prune(pool: str, cluster_dir: str, out: str, p: PruneConfig, carried: bool) -> tuple[Laps, dict]:
    """The prune stage's work (SemDeDup, DBP, cap) in numpy/pyarrow over the cluster stage's output.

    `carried`: the cluster output holds the rows (embedding, text), as the stage then reads it;
    otherwise the embeddings come from the pool, matched to the members by uid.
    """
    t = Laps()
    centroids = np.load(f"{cluster_dir}/centroids.npy", allow_pickle=False)
    if carried:
        table = pq.read_table(f"{cluster_dir}/data", columns=["uid", "cluster_id", "distance", f"{EMB}_f32", "text"])
        usable, _, valid_x = embedding_problems(table.column(f"{EMB}_f32"), centroids.shape[1])
        x = valid_x if usable.all() else np.zeros((len(usable), centroids.shape[1]), np.float32)
        x[usable] = valid_x
        members = table
        t.lap("read")
        row = np.arange(table.num_rows, dtype=np.int64)
    else:
        table, x, usable = read_matrix(pool, ["uid", EMB, "text"])
        members = pq.read_table(f"{cluster_dir}/data", columns=["uid", "cluster_id", "distance"])
        t.lap("read")
        row = pc.index_in(members.column("uid"), value_set=table.column("uid")).to_numpy(zero_copy_only=False)
        row = row.astype(np.int64)  # (every member is in the pool: the generated pool has no nulls)
    cid = members.column("cluster_id").to_numpy()
    keep_member = usable[row]
    row, cid = row[keep_member], cid[keep_member]
    dist = members.column("distance").to_numpy()[keep_member]
    order = np.argsort(cid, kind="stable")
    row, cid, dist = row[order], cid[order], dist[order]
    xm = x[row]
    um = np.asarray(table.column("uid").to_numpy(zero_copy_only=False)[row], dtype=str)
    k = len(centroids)
    bounds = np.searchsorted(cid, np.arange(k + 1))
    t.lap("group")
    # Per cluster, farthest first: `ranked` holds member positions in that order.
    ranked = np.empty(len(row), np.int64)
    max_sim = np.full(len(row), np.nan, np.float32)
    for j in range(k):
        a, b = bounds[j], bounds[j + 1]
        if a == b:
            continue
        r = dedup_cluster(um[a:b], dist[a:b], xm[a:b], p.block_size)
        ranked[a:b] = a + r["index"]
        max_sim[a + r["index"]] = r["max_sim_earlier"]
    t.lap("semdedup")
    survivor = ~semantic_duplicates(max_sim, p.dedup_eps) if p.dedup_eps is not None else np.ones(len(row), bool)
    n = np.bincount(cid[survivor], minlength=k)
    dsum = np.bincount(cid[survivor], weights=dist[survivor].astype(np.float64), minlength=k)
    d_intra = np.divide(dsum, n, out=np.full(k, np.nan), where=n > 0)
    d_inter = inter_cluster_distance(centroids, p.inter_k)
    if p.keep_fraction is not None:
        quota = dbp_quotas(n, np.nan_to_num(d_intra), d_inter, p.keep_fraction, p.temperature, p.floor_ratio)["quota"]
    else:
        quota = n
    limit = np.minimum(quota, p.max_per_cluster) if p.max_per_cluster else quota
    # A survivor's position among its cluster's survivors, farthest first (1-based), against its limit.
    surv_ranked = survivor[ranked]
    seen = np.cumsum(surv_ranked)
    before = np.concatenate([[0], seen])[bounds[:-1]]  # survivors in earlier clusters
    position = seen - np.repeat(before, np.diff(bounds))
    kept = ranked[surv_ranked & (position <= limit[cid[ranked]])]
    rank = np.empty(len(row), np.int64)
    rank[ranked] = np.arange(len(row)) - np.repeat(bounds[:-1], np.diff(bounds))
    t.lap("dbp")
    os.makedirs(out)
    kept_rows = row[kept]
    pq.write_table(
        pa.table({
            "uid": pa.array(um[kept]),
            "cluster_id": pa.array(cid[kept], pa.int32()),
            "distance": pa.array(dist[kept], pa.float32()),
            "rank": pa.array(rank[kept]),
            "text": table.column("text").take(pa.array(kept_rows)),
        }),
        f"{out}/part-0.parquet", compression="zstd",
    )
    t.lap("write")
    return t, {"kept_uids": set(um[kept].tolist()), "after_dedup": int(n.sum()), "after_dbp": int(quota.sum())}


# --------------------------------------------------------------------------- stage calls and reports


class LogLines(logging.Handler):
    """Keeps the pipeline's log messages of one call (the stages log their own phase times)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def spark_jobs(spark, group: str) -> list[dict]:
    """This job group's jobs from the Spark UI's REST API (the UI is on only with --jobs)."""
    sc = spark.sparkContext
    port = (sc.uiWebUrl or "").rsplit(":", 1)[-1]
    url = f"http://127.0.0.1:{port}/api/v1/applications/{sc.applicationId}/jobs"
    with urllib.request.urlopen(url, timeout=10) as fh:
        return [j for j in json.load(fh) if j.get("jobGroup") == group]


def _when(s: str) -> float:
    return datetime.strptime(s.replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def print_jobs(jobs: list[dict], seconds: float, lines: list[str]) -> None:
    spans = sorted((_when(j["submissionTime"]), _when(j["completionTime"])) for j in jobs if j.get("completionTime"))
    busy, end = 0.0, -np.inf
    for a, b in spans:  # the union of job intervals: time the executors had a job
        busy += max(0.0, b - max(a, end))
        end = max(end, b)
    print(f"      {len(jobs)} Spark jobs, {busy:.1f} s with a job running, {seconds - busy:.1f} s without (driver work)")
    for j in sorted(jobs, key=lambda j: _when(j["submissionTime"])):
        if j.get("completionTime"):
            d = _when(j["completionTime"]) - _when(j["submissionTime"])
            print(f"      {d:6.2f} s  {j['numTasks']:4d} tasks  {j['name']}")
    for line in lines:
        print(f"      log: {line}")


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system, reaped children included) of this process and its descendants:
    the driver JVM and the Python workers. Less sensitive than wall time to other people's load."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(name)] = int(fields[1])
            cpu[int(name)] = sum(int(v) for v in fields[11:15]) / tick
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo += [c for c, p in parent.items() if p == pid]
    return total


def timed_cpu(fn):
    """(fn's result, its CPU seconds in this process tree)."""
    c0 = tree_cpu_seconds()
    out = fn()
    return out, tree_cpu_seconds() - c0


def call_stage(spark, label: str, call, jobs: bool) -> tuple[float, dict, dict, float]:
    """Seconds, stats, peak RSS and CPU seconds of one stage call; with `jobs`, its Spark jobs and log printed."""
    spark.sparkContext.setJobGroup(label, label)
    handler = LogLines()
    logging.getLogger("pipeline").addHandler(handler)
    try:
        with PeakMemory() as mem:
            c0 = tree_cpu_seconds()
            t0 = time.perf_counter()
            stats = call().stats
            seconds = time.perf_counter() - t0
            cpu = tree_cpu_seconds() - c0
    finally:
        logging.getLogger("pipeline").removeHandler(handler)
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    if jobs:
        print(f"    {label}: {seconds:.1f} s")
        print_jobs(spark_jobs(spark, label), seconds, handler.lines)
    return seconds, stats, mem.peak, cpu


def config(args, k: int) -> PipelineConfig:
    return PipelineConfig(
        seed=args.seed,
        cluster=ClusterConfig(k=k, niter=args.niter, sample_per_centroid=args.sample_per_centroid, carry_input=not args.no_carry),
        prune=PruneConfig(
            dedup_eps=args.dedup_eps, keep_fraction=args.keep_fraction, temperature=0.5, inter_k=20,
            max_per_cluster=args.max_per_cluster,
        ),
    )


def print_versions(args) -> None:
    import faiss
    import pyspark

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"python {platform.python_version()}, pyspark {pyspark.__version__}, faiss {faiss.__version__}, "
        f"numpy {np.__version__}, pyarrow {pa.__version__}; {os.cpu_count()} cores ({usable} usable), "
        f"Spark {args.master}, driver memory {args.driver_memory}"
    )


def make_pool(path: str, n: int, args) -> str:
    """Write the pool; a line saying what was written."""
    t0 = time.perf_counter()
    files = args.files or max(2, -(-n // 250_000))
    write_pool(path, n, args.dim, args.centers, args.dup_fraction, args.seed, files)
    emb_type = pq.read_schema(f"{path}/part-0000.parquet").field(EMB).type
    assert emb_type == pa.list_(pa.float32()), emb_type  # as the embed stage writes it
    return f"pool: {n:,} x {args.dim} list<float32> in {files} files, written in {time.perf_counter() - t0:.1f} s"


def ratio_line(name: str, warm: float, cold: float, kernel: float, cpu: tuple[float, float]) -> str:
    return (f"{name}: stage {warm:.1f} s (cold {cold:.1f} s), kernel-only {kernel:.1f} s, "
            f"ratio {kernel / warm:.2f} (cold {kernel / cold:.2f}); CPU s {cpu[0]:.1f} vs {cpu[1]:.1f}, ratio {cpu[1] / cpu[0]:.2f}")


def compare(args, spark, work: str) -> None:
    pool = os.path.join(work, "pool")
    print(make_pool(pool, args.n, args))
    stages = args.stages.split(",")
    cfg = config(args, args.k)
    run_root = os.path.join(work, "run")
    prune_root = run_root if args.prune_k == args.k else os.path.join(work, f"run-k{args.prune_k}")
    pcfg = cfg if prune_root == run_root else config(args, args.prune_k)
    times: dict[str, tuple[float, float]] = {}
    cpus: dict[str, float] = {}  # the stage's warm calls: the least CPU seconds
    for name in stages:
        if name == "cluster":
            calls = [call_stage(spark, f"cluster-{w}{i or ''}", lambda: run_cluster(spark, pool, run_root, cfg, force=True), args.jobs and w == "warm")
                     for i, w in enumerate(("cold", *["warm"] * args.repeat))]
            warm = min(calls[1:], key=lambda c: c[0])
            times["cluster"] = (warm[0], calls[0][0])
            cpus["cluster"] = min(c[3] for c in calls[1:])
            print(f"  stage cluster (k={args.k}): cold {calls[0][0]:.1f} s, warm {', '.join(f'{c[0]:.1f}' for c in calls[1:])} s; "
                  f"sample {warm[1]['sample_size']:,}, faiss train {warm[1]['train_seconds']:.1f} s (in the best warm call)")
        if name == "prune":
            if not os.path.exists(os.path.join(prune_root, "cluster")):
                seconds, _, _, _ = call_stage(spark, "cluster-prep", lambda: run_cluster(spark, pool, prune_root, pcfg, force=True), False)
                print(f"  prune's input: cluster stage with k={args.prune_k} in {seconds:.1f} s (not counted)")
            calls = [call_stage(spark, f"prune-{w}{i or ''}", lambda: run_prune(spark, pool, None, prune_root, pcfg, force=True), args.jobs and w == "warm")
                     for i, w in enumerate(("cold", *["warm"] * args.repeat))]
            times["prune"] = (min(c[0] for c in calls[1:]), calls[0][0])
            cpus["prune"] = min(c[3] for c in calls[1:])
            s = calls[1][1]
            print(f"  stage prune (on k={args.prune_k} clusters): cold {calls[0][0]:.1f} s, warm {', '.join(f'{c[0]:.1f}' for c in calls[1:])} s; "
                  f"{s['members']:,} members, after dedup {s['after_dedup']:,}, after DBP {s['after_dbp']:,}, kept {s['kept']:,}")

    lines = []
    kernels: dict[str, float] = {}
    if "cluster" in stages:
        runs = [timed_cpu(lambda i=i: kernel_cluster(pool, os.path.join(work, f"kernel-cluster-{i}"), cfg.cluster, cfg.seed))
                for i in range(args.repeat)]
        (laps, got), _ = min(runs, key=lambda r: r[0][0].total)
        kernel_cpu = min(r[1] for r in runs)
        stage_out = pq.read_table(f"{run_root}/cluster/data", columns=["uid", "cluster_id"])
        at = pc.index_in(got["uids"], value_set=stage_out.column("uid")).to_numpy(zero_copy_only=False)
        same = float(np.mean(stage_out.column("cluster_id").to_numpy()[at] == got["cluster_id"]))
        print(f"  kernel-only cluster: {laps.total:.1f} s ({laps}); sample {got['sample']:,} "
              + ("by Spark's xxhash64 key: same rows and order as the stage" if got["exact_sample"]
                 else "by a numpy stand-in key (xxhash not installed): the stage's selection cost, other rows")
              + f"; {same:.2%} of rows in the stage's cluster")
        lines.append(ratio_line("cluster", *times["cluster"], laps.total, (cpus["cluster"], kernel_cpu)))
        kernels["cluster"], kernels["cluster-cpu"] = laps.total, kernel_cpu
    if "prune" in stages:
        runs = [timed_cpu(lambda i=i: kernel_prune(pool, os.path.join(prune_root, "cluster"), os.path.join(work, f"kernel-prune-{i}"),
                                                   pcfg.prune, pcfg.cluster.carry_input)) for i in range(args.repeat)]
        (laps, got), _ = min(runs, key=lambda r: r[0][0].total)
        kernel_cpu = min(r[1] for r in runs)
        stage_kept = set(pq.read_table(f"{prune_root}/prune/data", columns=["uid"]).column("uid").to_pylist())
        diff = len(stage_kept ^ got["kept_uids"])
        print(f"  kernel-only prune: {laps.total:.1f} s ({laps}); after dedup {got['after_dedup']:,}, after DBP {got['after_dbp']:,}, "
              f"kept {len(got['kept_uids']):,}: " + ("the stage's uids" if diff == 0 else f"{diff:,} uids differ from the stage's"))
        lines.append(ratio_line("prune", *times["prune"], laps.total, (cpus["prune"], kernel_cpu)))
        kernels["prune"], kernels["prune-cpu"] = laps.total, kernel_cpu
    print()
    print(f"kernel-only / stage on {args.n:,} x {args.dim}: cluster k={args.k}, prune on k={args.prune_k} clusters; "
          f"warm = the best of {args.repeat} later call(s), kernel-only the best of {args.repeat}, cold = the stage's first "
          f"call in this session (cluster ran first); carry_input {'off' if args.no_carry else 'on'}; "
          f"load average {os.getloadavg()[0]:.2f} (1 min) at the end")
    print("\n".join(lines))
    if len(times) == 2 and args.prune_k == args.k:
        stage, kernel = times["cluster"][0] + times["prune"][0], kernels["cluster"] + kernels["prune"]
        cpu = (cpus["cluster"] + cpus["prune"], kernels["cluster-cpu"] + kernels["prune-cpu"])
        print(f"cluster + prune: stage {stage:.1f} s, kernel-only {kernel:.1f} s, ratio {kernel / stage:.2f}; "
              f"CPU s {cpu[0]:.1f} vs {cpu[1]:.1f}, ratio {cpu[1] / cpu[0]:.2f}")


def scale(args, spark, work: str) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    cfg = config(args, args.k)
    if args.warmup:
        pool, run_root = os.path.join(work, "pool-warmup"), os.path.join(work, "run-warmup")
        write_pool(pool, args.warmup, args.dim, args.centers, args.dup_fraction, args.seed, 2)
        t0 = time.perf_counter()
        run_cluster(spark, pool, run_root, cfg, force=True)
        run_prune(spark, pool, None, run_root, cfg, force=True)
        print(f"warm-up: cluster + prune on {args.warmup:,} rows in {time.perf_counter() - t0:.1f} s (not counted)")
        shutil.rmtree(pool), shutil.rmtree(run_root)
    print(f"cluster k={args.k} then prune on its clusters (dedup_eps {args.dedup_eps}, keep_fraction {args.keep_fraction}"
          f"{f', cap {args.max_per_cluster}' if args.max_per_cluster else ''}); peak RSS in MiB")
    print(f"{'rows':>12} {'cluster s':>10} {'prune s':>8} {'total s':>8} {'s per 1M':>9} {'CPU s per 1M':>13} {'pairs 1e9':>10} "
          f"{'prune s/1e9 pairs':>18} {'JVM':>7} {'worker max':>11} {'workers all':>12} {'driver py':>10} {'load':>5}")
    for n in sizes:
        pool, run_root = os.path.join(work, f"pool-{n}"), os.path.join(work, f"run-{n}")
        made = make_pool(pool, n, args)
        c_s, _, c_mem, c_cpu = call_stage(spark, f"cluster-{n}", lambda: run_cluster(spark, pool, run_root, cfg, force=True), args.jobs)  # noqa: B023
        p_s, _, p_mem, p_cpu = call_stage(spark, f"prune-{n}", lambda: run_prune(spark, pool, None, run_root, cfg, force=True), args.jobs)  # noqa: B023
        peak = {key: max(c_mem[key], p_mem[key]) for key in c_mem}
        total = c_s + p_s
        # SemDeDup's work: pairs within clusters, sum n_j (n_j - 1) / 2, which grows as N^2 / k at a fixed k
        size = pq.read_table(f"{run_root}/prune/cluster_stats.parquet", columns=["size"]).column("size").to_numpy()
        pairs = float((size * (size - 1) // 2).sum()) / 1e9
        print(f"{n:>12,} {c_s:>10.1f} {p_s:>8.1f} {total:>8.1f} {total / n * 1e6:>9.1f} {(c_cpu + p_cpu) / n * 1e6:>13.1f} {pairs:>10.2f} "
              f"{p_s / pairs:>18.1f} {peak['jvm']:>7.0f} "
              f"{peak['python_worker_max']:>11.0f} {peak['python_workers_total']:>12.0f} {peak['driver_python']:>10.0f} {os.getloadavg()[0]:>5.1f}",
              flush=True)
        if args.jobs:
            print(f"    {made}")
        shutil.rmtree(pool, ignore_errors=True)
        shutil.rmtree(run_root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="pool rows (compare mode)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=1000, help="clusters of the cluster stage")
    ap.add_argument("--prune-k", type=int, default=200, help="clusters of prune's input (as the issue's profile); = --k reuses that run")
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--sample-per-centroid", type=int, default=256)
    ap.add_argument("--dedup-eps", type=float, default=0.05)
    ap.add_argument("--keep-fraction", type=float, default=0.8)
    ap.add_argument("--max-per-cluster", type=int, default=None, help="prune's cap (default: off)")
    ap.add_argument("--stages", default="cluster,prune", help="compare mode: cluster, prune or both")
    ap.add_argument("--repeat", type=int, default=1, help="compare mode: warm stage calls and kernel-only runs, the best of each counts")
    ap.add_argument("--no-carry", action="store_true", help="cluster without carry_input: prune joins the assignment to the pool")
    ap.add_argument("--scale", action="store_true", help="cluster + prune at --sizes instead")
    ap.add_argument("--sizes", default="1000000,3000000,10000000")
    ap.add_argument("--warmup", type=int, default=20_000, help="--scale: untimed cluster + prune on this many rows first (0: none)")
    ap.add_argument("--centers", type=int, default=300, help="mixture components of the generated pool")
    ap.add_argument("--dup-fraction", type=float, default=0.05)
    ap.add_argument("--files", type=int, default=0, help="Parquet files per pool (default: one per 250k rows, at least 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="6g")
    ap.add_argument("--jobs", action="store_true", help="print each warm call's Spark jobs and the stage's log lines")
    ap.add_argument("--dir", help="work folder, kept (default: a temporary one, removed at the end)")
    args = ap.parse_args()
    logging.getLogger("pipeline").setLevel(logging.INFO)  # stage log lines reach --jobs (no handler prints them)

    print_versions(args)
    work = args.dir or tempfile.mkdtemp(prefix="bench-stage-vs-kernel-")
    os.makedirs(work, exist_ok=True)
    t0 = time.perf_counter()
    spark = get_spark(SparkConfig(
        master=args.master, driver_memory=args.driver_memory, shuffle_partitions=8, ui=args.jobs,
        conf={"spark.ui.showConsoleProgress": "false"},
    ))
    print(f"Spark session started in {time.perf_counter() - t0:.1f} s")
    try:
        if args.scale:
            scale(args, spark, work)
        else:
            compare(args, spark, work)
    finally:
        spark.stop()
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
