"""Prune stage: SemDeDup against an O(n^2) reference, DBP quotas against scipy, the Spark path
against the kernels, partition invariance, re-thresholding, bad inputs and the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.core.folder import sql_conf
from pipeline.kernels.dbp import dbp_quotas, inter_cluster_distance
from pipeline.kernels.semdedup import dedup_cluster, max_similarity_to_earlier, semantic_duplicates
from pipeline.registry import PipelineConfig
from pipeline.stages.cluster import ClusterConfig
from pipeline.stages.prune import PruneConfig
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
    # These vectors have no near tie (for every j the two best earlier members differ by more than
    # float32's error), so the argmax is unambiguous and must be the reference's; exact ties are
    # pinned on exactly representable vectors below.
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    assert min(np.diff(np.sort(sims[j, :j])[-2:])[0] for j in range(2, 150)) > 1e-5
    assert arg.tolist() == ref_arg
    dup = semantic_duplicates(best, EPS)
    ref_dup = np.array([b is not None and b > 1 - EPS for b in ref_best])
    np.testing.assert_array_equal(dup, ref_dup)
    assert dup.sum() >= 20  # the planted copies are found


@pytest.mark.parametrize("block", [1, 2, 3, 7, 1000])
def test_exact_ties_go_to_the_earliest_member_in_and_across_blocks(block):
    """Small-integer rows: every dot product is exact in float32, so ties are real ties, and the
    first earlier member attaining the maximum must win wherever the blocks fall."""
    rng = np.random.default_rng(7)
    x = rng.integers(-2, 3, size=(60, 6))
    x[30:] = x[rng.integers(0, 30, 30)]  # copies of earlier rows: more ties at the maximum
    best, arg = max_similarity_to_earlier(x.astype(np.float32), block_size=block)
    ref_best, ref_arg, ties = [-np.inf], [-1], 0
    for j in range(1, 60):
        dots = [int(x[i] @ x[j]) for i in range(j)]
        ref_best.append(max(dots))
        ref_arg.append(dots.index(max(dots)))  # the first i attaining it
        ties += dots.count(max(dots)) > 1
    assert best.tolist() == ref_best and arg.tolist() == ref_arg
    assert ties >= 10  # the rule is exercised, not just the maxima


def test_tied_members_resolve_in_the_documented_order():
    """Farthest first, equal distances by uid ascending; the earliest in that order wins a tie."""
    uids = ["m", "k", "n", "j", "z", "a"]
    dist = np.array([0.2, 0.5, 0.2, 0.5, 0.9, 0.1])
    x = np.array([[2, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 5], [3, 0, 0], [0, 0, 1]], np.float32)
    for block in (1, 2, 10):
        out = dedup_cluster(uids, dist, x, block_size=block)
        # order z j k m n a: z = m = n = e0, j = a = e2, k = e1
        assert out["index"].tolist() == [4, 3, 1, 0, 2, 5]
        np.testing.assert_array_equal(out["max_sim_earlier"], [np.nan, 0.0, 0.0, 1.0, 1.0, 1.0])
        # k ties z and j at 0 (one block when B = 2); n ties z and m at 1 (three blocks when B = 2)
        assert out["most_similar"].tolist() == [-1, 4, 4, 4, 4, 3], block


def test_semdedup_boundary_similarity_exactly_one_minus_eps_is_kept():
    """A duplicate needs cos > 1 - eps: 0.75 at eps 0.25 is not one, the next float32 up is."""
    above = float(np.nextafter(np.float32(0.75), np.float32(1.0)))
    sims = np.array([np.nan, 0.75, above, 0.5, -np.inf, 1.0], np.float32)
    assert semantic_duplicates(sims, 0.25).tolist() == [False, False, True, False, False, True]
    # end to end on vectors whose normalised cosines are exact in float32: |(3,2,1,1,1)| = 4
    x = np.array([[2, 0, 0, 0, 0], [3, 2, 1, 1, 1], [0, 1, 0, 0, 0]], np.float32)
    out = dedup_cluster(["a", "b", "c"], np.array([0.3, 0.2, 0.1]), x, block_size=2)
    np.testing.assert_array_equal(out["max_sim_earlier"], [np.nan, 0.75, 0.5])  # c: 0.5 with b
    assert out["most_similar"].tolist() == [-1, 0, 1]
    assert semantic_duplicates(out["max_sim_earlier"], 0.25).tolist() == [False, False, False]
    assert semantic_duplicates(out["max_sim_earlier"], 0.25 + 2**-20).tolist() == [False, True, False]
    assert semantic_duplicates(out["max_sim_earlier"], 0.5).tolist() == [False, True, False]
    assert semantic_duplicates(out["max_sim_earlier"], 0.5 + 2**-20).tolist() == [False, True, True]


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


def reference_dbp(n, d_intra, d_inter, keep: float, tau: float = 0.5, floor_ratio: float = 0.0) -> list[int]:
    """Stage 9's DBP quotas written out from the definition (MISSION.md, Abbas et al. 2024).

    Over the K clusters with members: C_j = d_inter * d_intra, P = softmax(C / tau),
    N' = round(keep * N) with halves up, lb_j = min(floor(floor_ratio * N' / K), n_j - 1) and >= 0,
    x_j = clip(N' P_j + nu, lb_j, n_j) with sum x = N'; then floors, and the remainder one each to
    the largest fractional parts, ties to the lower cluster index.
    """
    n = np.asarray(n, np.int64)
    live = n > 0
    total = int(np.floor(keep * n.sum() + 0.5))
    z = np.where(live, np.asarray(d_inter, float) * np.asarray(d_intra, float) / tau, -np.inf)
    e = np.exp(z - z[live].max())
    t = total * e / e.sum()
    lb = np.maximum(np.minimum(np.floor(floor_ratio * total / live.sum()), n - 1), 0).astype(float)
    ub = n.astype(float)

    def filled(nu: float) -> float:
        return float(np.clip(t + nu, lb, ub).sum())

    # sum_j clip(t_j + nu, lb_j, n_j) is piecewise linear and non-decreasing in nu with kinks at
    # lb_j - t_j and n_j - t_j: find the kink interval where it reaches N' and interpolate.
    kinks = np.sort(np.concatenate([lb - t, ub - t]))
    k = next(i for i, nu in enumerate(kinks) if filled(nu) >= total)
    nu = kinks[k]
    if k > 0 and filled(kinks[k]) > filled(kinks[k - 1]):
        a, b = kinks[k - 1], kinks[k]
        nu = a + (total - filled(a)) * (b - a) / (filled(b) - filled(a))
    x = np.clip(t + nu, lb, ub)
    q = [int(np.floor(v + 1e-9)) for v in x]  # an integer computed as 49.999... is 50
    left = total - sum(q)
    for j in sorted(range(len(n)), key=lambda j: (-(x[j] - q[j]), j)):
        if left > 0 and q[j] < n[j]:
            q[j], left = q[j] + 1, left - 1
    assert left == 0 and sum(q) == total
    return q


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
    assert q["quota"].tolist() == reference_dbp(n, d_intra, d_inter, keep, tau, floor_ratio)


def test_dbp_rounding_is_exact_when_every_share_is_fractional():
    n = np.array([10, 10, 10])
    q = dbp_quotas(n, np.ones(3), np.ones(3), keep_fraction=0.5, temperature=1.0)  # 15 over 3 equal clusters
    assert q["quota"].tolist() == [5, 5, 5]
    q = dbp_quotas(np.array([10, 10, 10, 10]), np.ones(4), np.ones(4), keep_fraction=0.35, temperature=1.0)  # 14 / 4
    assert q["quota"].tolist() == [4, 4, 3, 3]  # remainders to the lowest cluster ids on ties


def test_dbp_lower_bound_is_n_minus_one_so_every_cluster_loses_a_member():
    # N = 201, N' = round(100.5) = 101 (halves up), K = 3, floor(1.0 * 101 / 3) = 33.
    # C = d_inter * d_intra = [0.05, 0.9, 0.9], C / tau = [0.5, 9, 9]: P_0 = 1 / (1 + 2 e^8.5) ~ 1e-4.
    d_intra, d_inter = [0.1, 0.9, 0.9], [0.5, 1.0, 1.0]
    # lb = [min(33, 1 - 1), 33, 33] = [0, 33, 33]; no bound binds, nu = 0: x = [0.01, 50.495, 50.495];
    # floors [0, 50, 50], the one left over to the tied larger fraction of the lower index: cluster 1
    q = dbp_quotas(np.array([1, 100, 100]), np.array(d_intra), np.array(d_inter), 0.5, 0.1, floor_ratio=1.0)
    assert q["keep_total"] == 101 and q["lower"].tolist() == [0, 33, 33]
    assert q["quota"].tolist() == [0, 51, 50]
    # N = 205, N' = 103, floor(103 / 3) = 34, lb = [min(34, 4), 34, 34]: cluster 0 is lifted to
    # n_0 - 1 = 4 (not n_0 = 5), the other two share 99: 49.5 each, the tie to cluster 1
    q = dbp_quotas(np.array([5, 100, 100]), np.array(d_intra), np.array(d_inter), 0.5, 0.1, floor_ratio=1.0)
    assert q["lower"].tolist() == [4, 34, 34] and q["quota"].tolist() == [4, 50, 49]
    assert reference_dbp([1, 100, 100], d_intra, d_inter, 0.5, 0.1, 1.0) == [0, 51, 50]
    assert reference_dbp([5, 100, 100], d_intra, d_inter, 0.5, 0.1, 1.0) == [4, 50, 49]


def test_dbp_floor_ratio_lifts_a_cluster_whose_share_is_below_the_floor():
    n, d_intra, d_inter = np.array([40, 100, 100]), np.array([0.1, 0.9, 0.9]), np.array([0.5, 1.0, 1.0])
    # N' = 120, lb = floor(0.5 * 120 / 3) = 20 < n_j - 1 for all: cluster 0's share 120 P_0 ~ 0.012
    # is lifted to 20, the other two take 50 each
    q = dbp_quotas(n, d_intra, d_inter, 0.5, 0.1, floor_ratio=0.5)
    assert q["lower"].tolist() == [20, 20, 20] and q["quota"].tolist() == [20, 50, 50]
    # without a floor: x = [0.012, 59.994, 59.994], floors [0, 59, 59] and two left over
    assert dbp_quotas(n, d_intra, d_inter, 0.5, 0.1)["quota"].tolist() == [0, 60, 60]
    assert reference_dbp(n, d_intra, d_inter, 0.5, 0.1, 0.5) == [20, 50, 50]
    assert reference_dbp(n, d_intra, d_inter, 0.5, 0.1) == [0, 60, 60]


def test_dbp_softmax_divides_complexity_by_the_temperature():
    n, d_intra, d_inter = np.array([100, 100]), np.array([0.2, 0.4]), np.array([1.0, 1.0])
    # C / tau = [0.4, 0.8]: P = [1, e^0.4] / (1 + e^0.4) = [0.40131, 0.59869], N' = 100 -> [40, 60].
    # (C * tau = [0.1, 0.2] would give [47.502, 52.498] -> [48, 52].)
    assert dbp_quotas(n, d_intra, d_inter, 0.5, temperature=0.5)["quota"].tolist() == [40, 60]
    assert dbp_quotas(n, d_intra, d_inter, 0.5)["quota"].tolist() == [40, 60]  # tau = 0.5 by default
    # tau = 0.25: C / tau = [0.8, 1.6], P_0 = 1 / (1 + e^0.8) = 0.31003 -> [31, 69]
    assert dbp_quotas(n, d_intra, d_inter, 0.5, temperature=0.25)["quota"].tolist() == [31, 69]
    assert reference_dbp(n, d_intra, d_inter, 0.5, 0.5) == [40, 60]
    assert reference_dbp(n, d_intra, d_inter, 0.5, 0.25) == [31, 69]


def test_d_inter_averages_the_nearest_other_centroids_never_itself():
    # unnormalised on purpose (cosine); pairwise cosine distances: d(0,1) = 1, d(0,2) = 2, d(1,2) = 1
    c = np.array([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert inter_cluster_distance(c, 1).tolist() == [1.0, 1.0, 1.0]  # with itself: 0
    assert inter_cluster_distance(c, 2).tolist() == [1.5, 1.0, 1.5]  # with itself: 0.5
    assert inter_cluster_distance(c, 20).tolist() == [1.5, 1.0, 1.5]  # k > K - 1: all others
    assert inter_cluster_distance(c[:1], 20).tolist() == [0.0]  # no other centroid


# --- the stage on Spark -----------------------------------------------------------------------------

CFG = PipelineConfig(
    seed=3,
    cluster=ClusterConfig(k=6, niter=10, sample_per_centroid=100, top_m=2),
    prune=PruneConfig(dedup_eps=EPS, keep_fraction=0.6, temperature=0.5, inter_k=3, floor_ratio=0.5, max_per_cluster=50, block_size=16),
)


def cluster_and_prune(spark, emb: str, run_root: str, cfg=CFG):
    from pipeline.api import run_cluster, run_prune

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
        quota = np.array(reference_dbp(n, d_intra, d_inter, p.keep_fraction, p.temperature, p.floor_ratio))
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
    assert pruned["result"].stats["members_from"] == "clustered cluster output"  # the walk, no join
    ref = reference_prune(spark, pruned)
    ledger = spark.read.parquet(f"{pruned['run']}/decisions/stage=prune").toPandas()
    assert len(ledger) == len(ref["reasons"]) and ledger.uid.is_unique
    got = {u: (r if isinstance(r, str) else None) for u, r in zip(ledger.uid, ledger.reason, strict=True)}
    assert got == ref["reasons"]
    assert set(got.values()) == {None, "semantic_duplicate", "density_pruned", "cluster_capped"}
    # inside a cluster the farthest survivors are kept: each kept member comes (by rank) before
    # every density_pruned or cluster_capped one, in clusters that have both
    last_kept, first_cut = {}, {}
    for u, r in got.items():
        cid, rank = ref["sims"][u][:2]
        if r is None:
            last_kept[cid] = max(last_kept.get(cid, -1), rank)
        elif r != "semantic_duplicate":
            first_cut[cid] = min(first_cut.get(cid, len(got)), rank)
    both = set(last_kept) & set(first_cut)
    assert both and all(last_kept[c] < first_cut[c] for c in both)
    # duplicate details name the earlier member they duplicate: the reference's (the earliest at
    # the maximum), or another only on a tie within float32 rounding: a chain's middle B placed
    # after both ends has cos(A, B) = cos(B, C) in exact arithmetic, and rounding picks the winner
    dups = ledger[ledger.reason == "semantic_duplicate"]
    row = {u: i for i, u in enumerate(pruned["uids"])}
    x64 = pruned["x"].astype(np.float64)
    for u, detail in zip(dups.uid, dups.detail, strict=True):
        named, ref_named = detail.split()[2], ref["sims"][u][3]
        cos = float(x64[row[u]] @ x64[row[named]])
        assert ref["sims"][named][1] < ref["sims"][u][1] and abs(cos - ref["sims"][u][2]) < 1e-5
        assert named == ref_named or abs(cos - float(x64[row[u]] @ x64[row[ref_named]])) < 1e-6
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
    # small file splits, 7 shuffle partitions, Parquet row groups of a few rows and Arrow batches
    # of 7 rows: prune's walk must read each cluster output file whole (a split can start at any
    # row group) and join a cluster's rows across batches
    small = {"spark.sql.files.maxPartitionBytes": "8192", "spark.sql.files.openCostInBytes": "0", "spark.sql.shuffle.partitions": "7",
             "parquet.block.size": "4096", "parquet.block.size.row.check.min": "8", "parquet.block.size.row.check.max": "8",
             "spark.sql.execution.arrow.maxRecordsPerBatch": "7"}
    with sql_conf(spark, small):
        assert spark.read.parquet(pruned["emb"]).rdd.getNumPartitions() > 3
        cluster_and_prune(spark, pruned["emb"], other)
        assert spark.read.parquet(f"{other}/cluster/data").rdd.getNumPartitions() > 7  # (the files do split)
    with sql_conf(spark, {"spark.sql.shuffle.partitions": "1"}):
        cluster_and_prune(spark, pruned["emb"], pruned["run"])  # complete: skipped, same config
    for rel, key in (("prune/data", "uid"), ("decisions/stage=prune", "uid"), ("prune/similarity", "uid")):
        a = spark.read.parquet(f"{pruned['run']}/{rel}").toPandas().sort_values(key).reset_index(drop=True)
        b = spark.read.parquet(f"{other}/{rel}").toPandas().sort_values(key).reset_index(drop=True)
        assert a.equals(b), rel
    import pandas as pd

    assert pd.read_parquet(f"{pruned['run']}/prune/cluster_stats.parquet").equals(pd.read_parquet(f"{other}/prune/cluster_stats.parquet"))


def test_joined_and_clustered_inputs_give_the_same_outputs(spark, pruned, tmp_path):
    """The cluster output without the input's rows (carry_input off): prune joins it to the
    embeddings and groups by cluster, and must write what the walk over the clustered copy wrote."""
    import dataclasses

    import pandas as pd

    cfg = dataclasses.replace(CFG, cluster=dataclasses.replace(CFG.cluster, carry_input=False))
    other = str(tmp_path / "run")
    result = cluster_and_prune(spark, pruned["emb"], other, cfg)
    assert result.stats["members_from"] == "cluster output joined to the input"
    assert spark.read.parquet(f"{other}/cluster/data").columns == ["uid", "cluster_id", "distance", "top_clusters", "top_distances"]
    for rel in ("prune/data", "decisions/stage=prune", "prune/similarity"):
        a = spark.read.parquet(f"{pruned['run']}/{rel}").toPandas().sort_values("uid").reset_index(drop=True)
        b = spark.read.parquet(f"{other}/{rel}").toPandas().sort_values("uid").reset_index(drop=True)
        assert len(a) > 0 and a.equals(b), rel
    assert pd.read_parquet(f"{pruned['run']}/prune/cluster_stats.parquet").equals(pd.read_parquet(f"{other}/prune/cluster_stats.parquet"))


def test_a_cluster_read_in_pieces_is_refused(spark, pruned, tmp_path):
    """A cluster output whose stats say clustered but whose rows are not (shuffled over three
    files): a cluster ranked in pieces would miss pairs across them, so prune stops."""
    from pyspark.sql import functions as F

    from pipeline.api import run_prune
    from pipeline.stages.prune import PruneError

    shutil.copytree(f"{pruned['run']}/cluster", tmp_path / "c" / "cluster")
    rows = spark.read.parquet(f"{pruned['run']}/cluster/data").orderBy(F.rand(1)).repartition(3)
    shutil.rmtree(tmp_path / "c" / "cluster" / "data")
    rows.write.parquet(str(tmp_path / "c" / "cluster" / "data"))
    with pytest.raises(PruneError, match="read in more than one piece"):
        run_prune(spark, pruned["emb"], str(tmp_path / "c"), str(tmp_path / "run"), CFG)


def test_rethreshold_a_stored_similarity_table_without_embeddings(spark, pruned, tmp_path):
    from pyspark.sql import functions as F

    from pipeline.api import run_prune
    from pipeline.stages.prune import rethreshold

    ref = reference_prune(spark, pruned)
    # two stored maxima moved onto the boundary of eps = 0.25: exactly 1 - eps (0.75, exact in
    # float32) is not a duplicate, the next float32 up is
    above = float(np.nextafter(np.float32(0.75), np.float32(1.0)))
    sims = {u: b for u, (_, _, b, _) in ref["sims"].items()}
    at, over = sorted(u for u, b in sims.items() if b is not None and b < 0.7)[:2]
    sims[at], sims[over] = 0.75, above
    moved = F.when(F.col("uid") == at, F.lit(0.75)).when(F.col("uid") == over, F.lit(above))
    stored = spark.read.parquet(f"{pruned['run']}/prune/similarity")
    shutil.copytree(f"{pruned['run']}/prune", tmp_path / "old" / "prune")  # a run folder to point at
    table_path = str(tmp_path / "old" / "prune" / "similarity")
    stored.withColumn("max_sim_earlier", moved.otherwise(F.col("max_sim_earlier")).cast("float")).write.mode("overwrite").parquet(table_path)
    cfg = PipelineConfig(prune=PruneConfig(dedup_eps=0.25, similarity=str(tmp_path / "old")))
    # the input has no embedding column at all: nothing is recomputed
    spark.read.parquet(pruned["emb"]).select("uid", "text").write.parquet(str(tmp_path / "texts"))
    result = run_prune(spark, str(tmp_path / "texts"), pruned["run"], str(tmp_path / "run"), cfg)
    ledger = spark.read.parquet(str(tmp_path / "run" / "decisions" / "stage=prune")).toPandas()
    got = {u for u, r in zip(ledger.uid, ledger.reason, strict=True) if r == "semantic_duplicate"}
    want = {u for u, b in sims.items() if b is not None and b > 0.75}
    at_005 = sum(r == "semantic_duplicate" for r in ref["reasons"].values())
    assert over in want and at not in want
    assert got == want and len(want) > at_005
    assert result.stats["dropped"] == {"semantic_duplicate": len(want)}
    table = rethreshold(spark.read.parquet(table_path), 0.25)
    assert {r.uid for r in table.where("is_duplicate").collect()} == want


def test_invalid_or_missing_embeddings_in_the_prune_input_are_ledger_rows(spark, pruned, tmp_path):
    from pipeline.api import run_prune

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
    from pipeline.core.ledger import check_accounting

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
