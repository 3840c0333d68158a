"""Prune stage: SemDeDup against an O(n^2) reference, DBP quotas against scipy, the Spark path
against the kernels, partition invariance, re-thresholding, bad inputs and the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.config import ClusterConfig, PipelineConfig, PruneConfig
from pipeline.dbp import dbp_quotas, inter_cluster_distance
from pipeline.runs import sql_conf
from pipeline.semdedup import dedup_cluster, max_similarity_to_earlier, semantic_duplicates
from tests.embedgen import mixture, plant_duplicates, unit, write_embeddings
from tests.test_schemas import assert_matches_contract

EPS = 0.05


def reference_max_sim(x: np.ndarray) -> tuple[list[float | None], list[int]]:
    """O(n^2): for each j, the max over ALL earlier i (removed or not) of cos(x_i, x_j), float64."""
    x = np.asarray(x, np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    best: list[float | None] = []
    arg: list[int] = []
    for j in range(len(x)):
        b, a = None, -1
        for i in range(j):
            s = float(np.dot(x[i], x[j]))
            if b is None or s > b:
                b, a = s, i
        best.append(b)
        arg.append(a)
    return best, arg


@pytest.mark.parametrize("block", [1, 7, 64, 150, 1000])
def test_blocked_max_similarity_equals_the_quadratic_reference(block):
    x = plant_duplicates(mixture(150, 16, centers=2, seed=4), pairs=20, seed=4)
    best, arg = max_similarity_to_earlier(x, block_size=block)
    ref_best, ref_arg = reference_max_sim(x)
    assert best[0] == -np.inf and arg[0] == -1
    np.testing.assert_allclose(best[1:], np.array(ref_best[1:]), atol=1e-5)
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    for j in range(1, 150):
        # same member, or an exact tie within float32 rounding
        assert arg[j] == ref_arg[j] or abs(sims[arg[j], j] - sims[ref_arg[j], j]) < 1e-5
    dup = semantic_duplicates(best, EPS)
    ref_dup = np.array([b is not None and b > 1 - EPS for b in ref_best])
    np.testing.assert_array_equal(dup, ref_dup)
    assert dup.sum() >= 20  # the planted copies are found


def test_chain_keeps_only_its_head():
    """A~B, B~C, A not~C: C is compared with B, which is earlier although removed, so only A stays."""
    rng = np.random.default_rng(0)
    a = unit(rng.normal(size=24))
    v = unit(rng.normal(size=24) - (rng.normal(size=24) @ a) * a)
    v = unit(v - (v @ a) * a)
    b = np.cos(0.25) * a + np.sin(0.25) * v
    c = np.cos(0.5) * a + np.sin(0.5) * v
    d = unit(rng.normal(size=24))
    x = np.stack([a, b, c, d]).astype(np.float32)
    assert np.dot(a, b) > 0.95 and np.dot(b, c) > 0.95 and np.dot(a, c) < 0.95
    out = dedup_cluster(["a", "b", "c", "d"], np.array([0.9, 0.8, 0.7, 0.1]), x, block_size=2)
    dup = semantic_duplicates(out["max_sim_earlier"], EPS)
    assert [("a", "b", "c", "d")[i] for i in out["index"][~dup]] == ["a", "d"]
    assert out["most_similar"][2] == 1  # C's maximum is with B


def test_order_is_farthest_first_with_uid_tie_break():
    uids = ["e", "b", "a", "d", "c"]
    dist = np.array([0.5, 0.9, 0.5, 0.1, 0.9], np.float32)
    out = dedup_cluster(uids, dist, np.eye(5, dtype=np.float32), block_size=2)
    expected = sorted(range(5), key=lambda i: (-float(dist[i]), uids[i]))
    assert out["index"].tolist() == expected
    assert out["rank"].tolist() == [0, 1, 2, 3, 4]


def test_inter_cluster_distance_equals_brute_force():
    c = np.random.default_rng(3).normal(size=(30, 5))
    for k in (1, 4, 29, 100):
        got = inter_cluster_distance(c, k, block_size=7)
        cn = c / np.linalg.norm(c, axis=1, keepdims=True)
        ref = [np.mean(sorted(1 - cn[i] @ cn[j] for j in range(30) if j != i)[: min(k, 29)]) for i in range(30)]
        np.testing.assert_allclose(got, ref, atol=1e-12)


def scipy_projection(target, lower, upper, total):
    """min ||x - target||^2 s.t. sum x = total, lower <= x <= upper, by a generic solver (SLSQP),
    in units of `total` so the problem is well scaled."""
    from scipy.optimize import minimize

    t, lo, hi = target / total, lower / total, upper / total
    res = minimize(
        lambda y: float(((y - t) ** 2).sum()), np.clip(np.full(len(t), 1 / len(t)), lo, hi), jac=lambda y: 2 * (y - t),
        method="SLSQP", bounds=list(zip(lo, hi, strict=True)),
        constraints=[{"type": "eq", "fun": lambda y: y.sum() - 1.0, "jac": lambda y: np.ones_like(y)}],
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    assert res.success, res.message
    return res.x * total


@pytest.mark.parametrize("seed", range(12))
def test_dbp_quotas_equal_the_constrained_least_squares_solution(seed):
    from scipy.special import softmax

    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 40))
    n = rng.integers(0, 300, k)
    n[rng.random(k) < 0.15] = 0
    n[0] = max(n[0], 1)
    d_intra, d_inter = rng.uniform(0.05, 0.6, k), rng.uniform(0.2, 1.0, k)
    keep, tau, floor_ratio = float(rng.uniform(0.05, 1.0)), float(rng.uniform(0.05, 1.0)), float(rng.uniform(0, 1))
    q = dbp_quotas(n, d_intra, d_inter, keep, tau, floor_ratio)
    n_keep = int(np.floor(keep * n.sum() + 0.5))
    live = n > 0
    p = np.zeros(k)
    p[live] = softmax(d_inter[live] * d_intra[live] / tau)
    lb = np.maximum(0, np.minimum(np.floor(floor_ratio * n_keep / live.sum()), n - 1))
    assert q["keep_total"] == n_keep
    assert int(q["quota"].sum()) == n_keep
    assert np.all(lb <= q["quota"]) and np.all(q["quota"] <= n)
    ref = scipy_projection(n_keep * p, lb, n.astype(float), n_keep)
    np.testing.assert_allclose(q["x"], ref, atol=1e-3 * max(1.0, n_keep / k))
    assert np.all(np.abs(q["quota"] - q["x"]) < 1.0)
    assert np.all(q["quota"][~live] == 0)


def test_dbp_rounding_is_exact_when_every_share_is_fractional():
    n = np.array([10, 10, 10])
    q = dbp_quotas(n, np.ones(3), np.ones(3), keep_fraction=0.5, temperature=1.0)  # 15 over 3 equal clusters
    assert q["quota"].tolist() == [5, 5, 5]
    q = dbp_quotas(np.array([10, 10, 10, 10]), np.ones(4), np.ones(4), keep_fraction=0.35, temperature=1.0)  # 14 / 4
    assert q["quota"].tolist() == [4, 4, 3, 3]  # remainders to the lowest cluster ids on ties


# --- the stage on Spark -----------------------------------------------------------------------------

CFG = PipelineConfig(
    seed=3,
    cluster=ClusterConfig(k=6, niter=10, sample_per_centroid=100, top_m=2),
    prune=PruneConfig(dedup_eps=EPS, keep_fraction=0.6, temperature=0.5, inter_k=3, floor_ratio=0.5, max_per_cluster=50, block_size=16),
)


def cluster_and_prune(spark, emb: str, run_root: str, cfg=CFG):
    from pipeline.cluster import run_cluster
    from pipeline.prune import run_prune

    run_cluster(spark, emb, run_root, cfg)
    return run_prune(spark, emb, None, run_root, cfg)


@pytest.fixture(scope="module")
def pruned(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prune")
    x = plant_duplicates(mixture(640, 16, centers=6, seed=5), pairs=40, seed=5)
    uids = write_embeddings(tmp / "emb.parquet", x)
    run_root = str(tmp / "run")
    result = cluster_and_prune(spark, str(tmp / "emb.parquet"), run_root)
    return {"x": x, "uids": uids, "run": run_root, "emb": str(tmp / "emb.parquet"), "result": result, "tmp": tmp}


def reference_prune(spark, pruned, cfg=CFG) -> dict:
    """Every decision recomputed from the cluster output with the quadratic reference."""
    p = cfg.prune
    clusters = spark.read.parquet(f"{pruned['run']}/cluster/data").toPandas()
    centroids = np.load(f"{pruned['run']}/cluster/centroids.npy")
    row = {u: i for i, u in enumerate(pruned["uids"])}
    k = len(centroids)
    members, sims, n, d_intra = {}, {}, np.zeros(k, np.int64), np.zeros(k)
    for cid, group in clusters.groupby("cluster_id"):
        order = sorted(zip(group.distance.astype(float), group.uid, strict=True), key=lambda t: (-t[0], t[1]))
        ordered = [u for _, u in order]
        best, arg = reference_max_sim(pruned["x"][[row[u] for u in ordered]])
        for r, u in enumerate(ordered):
            sims[u] = (cid, r, best[r], ordered[arg[r]] if arg[r] >= 0 else None)
        members[cid] = ordered
        survivors = [(d, u) for (d, u), b in zip(order, best, strict=True) if not (b is not None and b > 1 - p.dedup_eps)]
        n[cid] = len(survivors)
        d_intra[cid] = np.mean([d for d, _ in survivors]) if survivors else 0.0
    if p.keep_fraction is not None:
        cn = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        d_inter = np.array([np.mean(sorted(1 - cn[i] @ cn[j] for j in range(k) if j != i)[: p.inter_k]) for i in range(k)])
        quota = dbp_quotas(n, d_intra, d_inter, p.keep_fraction, p.temperature, p.floor_ratio)["quota"]
    else:
        quota = n
    cap = p.max_per_cluster or 10**9
    reasons = {}
    for cid, ordered in members.items():
        position = 0
        for u in ordered:
            b = sims[u][2]
            if p.dedup_eps is not None and b is not None and b > 1 - p.dedup_eps:
                reasons[u] = "semantic_duplicate"
                continue
            position += 1
            reasons[u] = "density_pruned" if position > quota[cid] else "cluster_capped" if position > cap else None
    return {"reasons": reasons, "sims": sims, "n": n, "quota": quota, "d_intra": d_intra}


def test_prune_equals_the_reference(spark, pruned):
    ref = reference_prune(spark, pruned)
    ledger = spark.read.parquet(f"{pruned['run']}/decisions/stage=prune").toPandas()
    assert len(ledger) == len(ref["reasons"]) and ledger.uid.is_unique
    got = {u: (r if isinstance(r, str) else None) for u, r in zip(ledger.uid, ledger.reason, strict=True)}
    assert got == ref["reasons"]
    assert set(got.values()) == {None, "semantic_duplicate", "density_pruned", "cluster_capped"}
    # duplicate details name the earlier member they duplicate (the chains' middles tie exactly)
    dups = ledger[ledger.reason == "semantic_duplicate"]
    row = {u: i for i, u in enumerate(pruned["uids"])}
    for u, detail in zip(dups.uid, dups.detail, strict=True):
        named = detail.split()[2]
        cos = float(pruned["x"][row[u]].astype(float) @ pruned["x"][row[named]].astype(float))
        assert ref["sims"][named][1] < ref["sims"][u][1] and abs(cos - ref["sims"][u][2]) < 1e-5
        assert detail == f"duplicate of {named} (cos={ref['sims'][u][2]:.3f})"
    kept = spark.read.parquet(f"{pruned['run']}/prune/data")
    assert sorted(r.uid for r in kept.select("uid").collect()) == sorted(u for u, r in ref["reasons"].items() if r is None)
    assert kept.columns == ["uid", "cluster_id", "distance", "rank", "text"]
    assert_matches_contract(kept, "prune")


def test_similarity_table_and_cluster_stats(spark, pruned):
    import pandas as pd

    ref = reference_prune(spark, pruned)
    sim = spark.read.parquet(f"{pruned['run']}/prune/similarity").toPandas().set_index("uid")
    assert len(sim) == len(ref["sims"])
    for u, (cid, rank, best, _most) in ref["sims"].items():
        assert (sim.at[u, "cluster_id"], sim.at[u, "rank"]) == (cid, rank)
        if best is None:
            assert pd.isna(sim.at[u, "max_sim_earlier"]) and sim.at[u, "most_similar_uid"] is None
        else:
            assert abs(sim.at[u, "max_sim_earlier"] - best) < 1e-5
    assert_matches_contract(spark.read.parquet(f"{pruned['run']}/prune/similarity"), "prune_similarity")
    stats = pd.read_parquet(f"{pruned['run']}/prune/cluster_stats.parquet")
    assert stats.cluster.tolist() == list(range(6))
    np.testing.assert_array_equal(stats.kept_after_dedup, ref["n"])
    np.testing.assert_array_equal(stats.kept_after_dbp, ref["quota"])
    np.testing.assert_array_equal(stats.kept_after_cap, np.minimum(ref["quota"], 50))
    np.testing.assert_allclose(stats.d_intra, ref["d_intra"], atol=1e-9)
    assert stats.quota.sum() == int(np.floor(0.6 * ref["n"].sum() + 0.5)) == pruned["result"].stats["after_dbp"]
    assert_matches_contract(spark.read.parquet(f"{pruned['run']}/prune/cluster_stats.parquet"), "cluster_stats")


def test_prune_output_is_partition_invariant(spark, pruned, tmp_path):
    other = str(tmp_path / "run")
    with sql_conf(spark, {"spark.sql.files.maxPartitionBytes": "8192", "spark.sql.files.openCostInBytes": "0", "spark.sql.shuffle.partitions": "7"}):
        assert spark.read.parquet(pruned["emb"]).rdd.getNumPartitions() > 3
        cluster_and_prune(spark, pruned["emb"], other)
    with sql_conf(spark, {"spark.sql.shuffle.partitions": "1"}):
        cluster_and_prune(spark, pruned["emb"], pruned["run"])  # complete: skipped, same config
    for rel, key in (("prune/data", "uid"), ("decisions/stage=prune", "uid"), ("prune/similarity", "uid")):
        a = spark.read.parquet(f"{pruned['run']}/{rel}").toPandas().sort_values(key).reset_index(drop=True)
        b = spark.read.parquet(f"{other}/{rel}").toPandas().sort_values(key).reset_index(drop=True)
        assert a.equals(b), rel
    import pandas as pd

    assert pd.read_parquet(f"{pruned['run']}/prune/cluster_stats.parquet").equals(pd.read_parquet(f"{other}/prune/cluster_stats.parquet"))


def test_rethreshold_a_stored_similarity_table_without_embeddings(spark, pruned, tmp_path):
    from pipeline.prune import rethreshold, run_prune

    ref = reference_prune(spark, pruned)
    cfg = PipelineConfig(prune=PruneConfig(dedup_eps=0.15, similarity=pruned["run"]))
    # the input has no embedding column at all: nothing is recomputed
    spark.read.parquet(pruned["emb"]).select("uid", "text").write.parquet(str(tmp_path / "texts"))
    result = run_prune(spark, str(tmp_path / "texts"), pruned["run"], str(tmp_path / "run"), cfg)
    ledger = spark.read.parquet(str(tmp_path / "run" / "decisions" / "stage=prune")).toPandas()
    got = {u for u, r in zip(ledger.uid, ledger.reason, strict=True) if r == "semantic_duplicate"}
    want = {u for u, (_, _, b, _) in ref["sims"].items() if b is not None and b > 1 - 0.15}
    at_005 = sum(r == "semantic_duplicate" for r in ref["reasons"].values())
    assert got == want and len(want) > at_005
    assert result.stats["dropped"] == {"semantic_duplicate": len(want)}
    table = rethreshold(spark.read.parquet(f"{pruned['run']}/prune/similarity"), 0.15)
    assert {r.uid for r in table.where("is_duplicate").collect()} == want


def test_invalid_or_missing_embeddings_in_the_prune_input_are_ledger_rows(spark, pruned, tmp_path):
    from pipeline.prune import run_prune

    x = pruned["x"].copy()
    uids = list(pruned["uids"])
    write_embeddings(tmp_path / "e.parquet", x[1:], uids=uids[1:], rows=[(0, [float("nan")] * 16)])
    cfg = PipelineConfig(prune=PruneConfig(dedup_eps=EPS))
    run_prune(spark, str(tmp_path / "e.parquet"), pruned["run"], str(tmp_path / "run"), cfg)
    ledger = spark.read.parquet(str(tmp_path / "run" / "decisions" / "stage=prune")).toPandas().set_index("uid")
    n_clustered = spark.read.parquet(f"{pruned['run']}/cluster/data").count()
    assert len(ledger) == n_clustered
    bad = ledger[ledger.reason == "invalid_embedding"]
    assert bad.detail.to_dict() == {uids[0]: "no embedding", uids[1]: "NaN or infinite value"}


def test_bad_settings_and_inputs_are_one_line_errors(spark, pruned, tmp_path, capsys):
    from pipeline.cli import main

    # DBP needs cosine distances: a non-spherical cluster output is refused before any work
    fake = tmp_path / "flat"
    shutil.copytree(f"{pruned['run']}/cluster", fake / "cluster")
    stats = json.loads((fake / "cluster" / "stats.json").read_text())
    (fake / "cluster" / "stats.json").write_text(json.dumps({**stats, "spherical": False}))
    (fake / "cluster" / ".stats.json.crc").unlink()  # Hadoop's local checksum of the old text
    rc = main(["prune", "--input", pruned["emb"], "--clusters", str(fake), "--output", str(tmp_path / "r"), "--keep-fraction", "0.5"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "recluster with --spherical" in err
    spark.read.parquet(pruned["emb"]).select("uid").write.parquet(str(tmp_path / "uids"))
    rc = main(["prune", "--input", str(tmp_path / "uids"), "--clusters", pruned["run"], "--output", str(tmp_path / "r"), "--dedup-eps", "0.1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "missing column(s) image_embedding" in err
    rc = main(["prune", "--input", pruned["emb"], "--output", str(tmp_path / "r"), "--max-per-cluster", "5"])
    assert rc == 2 and "not a cluster stage output" in capsys.readouterr().err  # r has no cluster stage


def test_cli_end_to_end_from_the_embed_stage(spark, tmp_path):
    """embed (precomputed .npy) -> cluster -> prune through the CLI; every uid accounted for."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.cli import main
    from pipeline.ledger import check_accounting

    x = plant_duplicates(mixture(300, 8, centers=3, seed=9), pairs=10, seed=9)
    np.save(tmp_path / "x.npy", x)
    pq.write_table(pa.table({"uid": [f"u{i:05d}" for i in range(300)]}), tmp_path / "uids.parquet")
    run = str(tmp_path / "run")
    assert main(["embed", "--npy", str(tmp_path / "x.npy"), "--uids", str(tmp_path / "uids.parquet"), "--output", run]) == 0
    assert main(["cluster", "--input", run, "--output", run, "--k", "3", "--niter", "5", "--seed", "2"]) == 0
    assert main(["prune", "--input", run, "--output", run, "--dedup-eps", "0.01", "--max-per-cluster", "60"]) == 0
    stats = json.loads(open(f"{run}/prune/stats.json").read())
    assert stats["rows_in"] == 300 and stats["dropped"]["semantic_duplicate"] >= 10
    sizes = spark.read.parquet(f"{run}/prune/data").groupBy("cluster_id").count().collect()
    assert len(sizes) == 3 and all(r["count"] <= 60 for r in sizes)
    accounting = check_accounting(spark, run, ["embed", "cluster", "prune"], first_stage="embed")
    assert accounting["inputs"] == 300 and accounting["kept"] == stats["kept"]
