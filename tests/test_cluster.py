"""Cluster stage: FAISS k-means on a hash-chosen sample, assignment against brute force, bad rows, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cluster import ClusterError, assign, load_centroids, sample_embeddings, train_kmeans
from pipeline.config import ClusterConfig, PipelineConfig
from pipeline.runs import Run, sql_conf
from tests.embedgen import mixture, write_embeddings
from tests.test_schemas import assert_matches_contract

DIM = 12
BAD_ROWS = [(3, None), (4, [float("nan")] * DIM), (5, [0.0] * DIM), (6, [0.5] * (DIM + 1)), (7, [float("inf")] + [0.1] * (DIM - 1)), (8, [0.1] * (DIM - 1) + [None])]


def brute_force_top(x: np.ndarray, c: np.ndarray, m: int, spherical: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every row against every centroid in float64, full sort."""
    x = np.asarray(x, np.float64)
    c = np.asarray(c, np.float64)
    if spherical:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        cn = c / np.linalg.norm(c, axis=1, keepdims=True)
        d = np.array([[1.0 - float(np.dot(xi, cj)) for cj in cn] for xi in x])
    else:
        d = np.array([[float(np.sum((xi - cj) ** 2)) for cj in c] for xi in x])
    order = np.argsort(d, axis=1, kind="stable")[:, :m]
    return order, np.take_along_axis(d, order, axis=1)


@pytest.mark.parametrize("spherical", [True, False])
def test_assignment_equals_brute_force_nearest_centroids(spherical):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, 9)).astype(np.float32)
    c = rng.normal(size=(37, 9)).astype(np.float32)
    ids, dist = assign(x, c, top_m=4, spherical=spherical)
    ref_ids, ref_dist = brute_force_top(x, c, 4, spherical)
    assert ids.shape == (400, 4) and ids.dtype == np.int32
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-5, atol=1e-5)


def test_assignment_does_not_depend_on_the_batch_a_row_is_in():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    c = rng.normal(size=(50, 16)).astype(np.float32)
    whole = assign(x, c, 3, True)
    pieces = [assign(x[s : s + 7], c, 3, True) for s in range(0, 300, 7)]
    np.testing.assert_array_equal(whole[0], np.concatenate([p[0] for p in pieces]))
    np.testing.assert_array_equal(whole[1], np.concatenate([p[1] for p in pieces]))


def test_kmeans_objective_beats_random_centroids_and_k_above_points_is_an_error():
    x = mixture(600, 8, centers=6, seed=1)
    out = train_kmeans(x, 6, niter=15, seed=0, spherical=True)
    assert out["centroids"].shape == (6, 8)
    np.testing.assert_allclose(np.linalg.norm(out["centroids"], axis=1), 1.0, rtol=1e-4)
    random_c = x[np.random.default_rng(0).choice(600, 6, replace=False)]
    ids, _ = assign(x, random_c, 1, True)
    sse_random = float(((x - random_c[ids[:, 0]]) ** 2).sum())
    assert out["sse"] < sse_random
    with pytest.raises(ClusterError, match="k=601 but only 600"):
        train_kmeans(x, 601, niter=2, seed=0, spherical=True)


def test_sample_is_the_smallest_hashes_and_partition_invariant(spark, tmp_path):
    from pyspark.sql import functions as F

    x = mixture(300, 4, centers=3, seed=2)
    write_embeddings(tmp_path / "e.parquet", x)
    df = spark.read.parquet(str(tmp_path / "e.parquet")).select("uid", F.col("image_embedding").alias("_emb"))
    one = sample_embeddings(df.coalesce(1), 5, 40, 4)
    seven = sample_embeddings(df.repartition(7), 5, 40, 4)
    assert one[1] == seven[1]
    np.testing.assert_array_equal(one[0], seven[0])
    # independently: all keys on the driver, sorted in pandas
    keys = df.select("uid", F.xxhash64(F.lit(5), "uid").alias("k")).toPandas().sort_values(["k", "uid"])
    assert one[1] == keys.uid.tolist()[:40]
    other_seed = sample_embeddings(df, 6, 40, 4)[1]
    assert other_seed != one[1]


@pytest.fixture(scope="module")
def clustered(spark, tmp_path_factory):
    from pipeline.cluster import run_cluster

    tmp = tmp_path_factory.mktemp("cluster")
    x = mixture(500, DIM, centers=5, seed=3)
    uids = write_embeddings(tmp / "emb.parquet", x, rows=BAD_ROWS)
    cfg = PipelineConfig(seed=11, cluster=ClusterConfig(k=5, niter=10, sample_per_centroid=60, top_m=3))
    run_root = str(tmp / "run")
    result = run_cluster(spark, str(tmp / "emb.parquet"), run_root, cfg)
    return {"x": x, "uids": uids, "run": run_root, "result": result, "cfg": cfg, "input": str(tmp / "emb.parquet")}


def test_run_cluster_assigns_every_valid_row_to_its_nearest_centroid(spark, clustered):
    run = Run(spark, clustered["run"])
    centroids = load_centroids(run.fs, f"{clustered['run']}/cluster/centroids.npy")
    assert centroids.shape == (5, DIM) and centroids.dtype == np.float32
    out = spark.read.parquet(f"{clustered['run']}/cluster/data").toPandas().sort_values("uid")
    bad = {i for i, _ in BAD_ROWS}
    valid = [i for i in range(len(clustered["x"])) if i not in bad]
    assert out.uid.tolist() == [clustered["uids"][i] for i in valid]
    ref_ids, ref_dist = brute_force_top(clustered["x"][valid], centroids, 3, True)
    np.testing.assert_array_equal(out.cluster_id.to_numpy(), ref_ids[:, 0])
    np.testing.assert_array_equal(np.stack(out.top_clusters.to_numpy()), ref_ids)
    np.testing.assert_allclose(out.distance.to_numpy(), ref_dist[:, 0], atol=1e-5)
    np.testing.assert_allclose(np.stack(out.top_distances.to_numpy()), ref_dist, atol=1e-5)
    stats = clustered["result"].stats
    assert stats["k"] == 5 and stats["dim"] == DIM and stats["sample_size"] == 300 and stats["niter"] == 10
    assert stats["faiss_version"] and stats["gpu"] in (True, False) and stats["spherical"] is True
    assert_matches_contract(spark.read.parquet(f"{clustered['run']}/cluster/data"), "cluster")


def test_bad_embeddings_are_ledger_rows_with_their_reason(spark, clustered):
    ledger = spark.read.parquet(f"{clustered['run']}/decisions/stage=cluster").toPandas()
    assert len(ledger) == len(clustered["x"]) and ledger.uid.is_unique
    dropped = ledger[ledger.decision == "dropped"].set_index("uid")
    assert set(dropped.reason) == {"invalid_embedding"}
    assert dropped.detail.to_dict() == {
        "u00003": "no embedding",
        "u00004": "NaN or infinite value",
        "u00005": "zero vector",
        "u00006": f"dimension {DIM + 1}, expected {DIM}",
        "u00007": "NaN or infinite value",
        "u00008": "null value",
    }


def test_cluster_is_partition_invariant_and_skips_when_complete(spark, clustered, tmp_path):
    from pipeline.cluster import run_cluster

    again = run_cluster(spark, clustered["input"], clustered["run"], clustered["cfg"])
    assert again.skipped
    with sql_conf(spark, {"spark.sql.files.maxPartitionBytes": "4096", "spark.sql.files.openCostInBytes": "0"}):
        assert spark.read.parquet(clustered["input"]).rdd.getNumPartitions() > 3
        run_cluster(spark, clustered["input"], str(tmp_path / "run"), clustered["cfg"])
    a = np.load(f"{clustered['run']}/cluster/centroids.npy")
    b = np.load(str(tmp_path / "run" / "cluster" / "centroids.npy"))
    np.testing.assert_array_equal(a, b)
    da = spark.read.parquet(f"{clustered['run']}/cluster/data").toPandas().sort_values("uid").reset_index(drop=True)
    db = spark.read.parquet(str(tmp_path / "run" / "cluster" / "data")).toPandas().sort_values("uid").reset_index(drop=True)
    assert da.drop(columns=["top_clusters", "top_distances"]).equals(db.drop(columns=["top_clusters", "top_distances"]))
    assert [list(v) for v in da.top_clusters] == [list(v) for v in db.top_clusters]


def test_cli_errors_are_one_line(spark, clustered, tmp_path, capsys):
    from pipeline.cli import main

    rc = main(["cluster", "--input", clustered["input"], "--output", str(tmp_path / "r"), "--k", "1000", "--sample-per-centroid", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "k=1000 but only 494 valid embeddings" in err
    rc = main(["cluster", "--input", clustered["input"], "--output", str(tmp_path / "r"), "--k", "2", "--embedding-col", "clip"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "missing column(s) clip" in err
    rc = main(["cluster", "--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r"), "--k", "2"])
    assert rc == 2 and "input not found" in capsys.readouterr().err
