"""Cluster stage: FAISS k-means on a hash-chosen sample, assignment against brute force, bad rows, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.folder import RunFolder as Run
from pipeline.core.folder import sql_conf
from pipeline.kernels.kmeans import ClusterError, assign, train_kmeans
from pipeline.registry import PipelineConfig
from pipeline.stages.cluster import ClusterConfig, load_centroids, sample_embeddings
from tests.embedgen import mixture, write_embeddings
from tests.test_schemas import assert_matches_contract

DIM = 12
BAD_ROWS = [(3, None), (4, [float("nan")] * DIM), (5, [0.0] * DIM), (6, [0.5] * (DIM + 1)), (7, [float("inf")] + [0.1] * (DIM - 1)), (8, [0.1] * (DIM - 1) + [None])]


def brute_force_top(x: np.ndarray, c: np.ndarray, m: int, spherical: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every row against every centroid in float64, full stable sort (ties: the lower centroid id first)."""
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


# Hand-written ties. Centroids (ids 0-4) in the plane: c0 = (-1, 0), c1 = (1, 1), c2 = (0, 1),
# c3 = (1, -1), c4 = (1, 0). Spherical distance 1 - cos: cos 45 degrees gives R = 1 - 1/sqrt(2).
TIE_CENTROIDS = [[-1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, -1.0], [1.0, 0.0]]
R = 0.2928932188134524
S = 1.7071067811865475
# (uid, row, top-3 ids, their distances): every row has an exact tie, lower id first.
TIE_ROWS = [
    ("a", [1.0, 0.0], [4, 1, 3], [0.0, R, R]),  # c1, c3 tie at ranks 2-3
    ("b", [-1.0, 1.0], [0, 2, 1], [R, R, 1.0]),  # c0, c2 tie at ranks 1-2
    ("c", [1.0, 1.0], [1, 2, 4], [0.0, R, R]),  # c2, c4 tie at ranks 2-3
    ("d", [0.0, 3.0], [2, 1, 0], [0.0, R, 1.0]),  # c0, c4 tie at rank 3: c4 is cut
    ("e", [-1.0, -1.0], [0, 3, 2], [R, 1.0, S]),  # c2, c4 tie at S = 1 + 1/sqrt(2), rank 3: c4 is cut
]


def test_assignment_of_exact_ties_puts_the_lower_centroid_id_first():
    x = np.array([row for _, row, _, _ in TIE_ROWS], np.float32)
    ids, dist = assign(x, np.array(TIE_CENTROIDS, np.float32), top_m=3, spherical=True)
    assert ids.tolist() == [top for _, _, top, _ in TIE_ROWS]
    np.testing.assert_allclose(dist, [d for _, _, _, d in TIE_ROWS], atol=1e-6)
    # squared L2 from the origin: c0, c2 and c4 at 1 (a tie of three), c1 and c3 at 2
    ids, dist = assign(np.zeros((1, 2), np.float32), np.array(TIE_CENTROIDS, np.float32), top_m=4, spherical=False)
    assert ids.tolist() == [[0, 2, 4, 1]]
    np.testing.assert_array_equal(dist, [[1.0, 1.0, 1.0, 2.0]])


def test_tie_among_more_centroids_than_candidates_goes_to_the_lowest_id():
    # ids 4-7 all at squared L2 distance 1 from the origin, ids 0-3 at 4: the nearest is id 4
    c = np.array([[2, 0], [2, 0], [2, 0], [2, 0], [1, 0], [-1, 0], [0, 1], [0, -1]], np.float32)
    ids, _ = assign(np.zeros((1, 2), np.float32), c, top_m=1, spherical=False)
    assert ids.tolist() == [[4]]
    # top 2 for the origin (four at 1) and for (1, 0): id 4 at 0, then ids 0-3 all at 1
    x = np.array([[0, 0], [1, 0], [0, 3]], np.float32)
    ids, dist = assign(x, c, top_m=2, spherical=False)
    assert ids.tolist() == [[4, 5], [4, 0], [6, 4]]
    np.testing.assert_array_equal(dist, [[1, 1], [0, 1], [4, 10]])


def test_spark_assignment_exports_ties_by_lower_id_and_nulls_for_invalid_rows(spark):
    """with_cluster_assignments on hand-written rows: cluster_id is the nearest, the lists nearest first."""
    from pyspark.sql import types as T

    from pipeline.stages.cluster import with_cluster_assignments

    schema = T.StructType([
        T.StructField("uid", T.StringType(), False),
        T.StructField("_emb", T.ArrayType(T.FloatType()), True),
        T.StructField("_detail", T.StringType(), True),
    ])
    rows = [(uid, row, None) for uid, row, _, _ in TIE_ROWS] + [("z", [0.0, 0.0], "zero vector")]
    checked = spark.createDataFrame(rows, schema).repartition(3)
    out = with_cluster_assignments(checked, np.array(TIE_CENTROIDS, np.float32), top_m=3, spherical=True)
    got = {r["uid"]: r for r in out.collect()}
    assert sorted(got) == ["a", "b", "c", "d", "e", "z"]
    for uid, _, top, dist in TIE_ROWS:
        r = got[uid]
        assert r["cluster_id"] == top[0] and list(r["top_clusters"]) == top, uid
        assert r["distance"] == pytest.approx(dist[0], abs=1e-6)
        assert list(r["top_distances"]) == pytest.approx(dist, abs=1e-6)
        assert r["_reason"] is None
    z = got["z"]
    assert z["cluster_id"] is None and z["distance"] is None and z["top_clusters"] is None and z["top_distances"] is None
    assert z["_reason"] == "invalid_embedding" and z["_detail"] == "zero vector"


def test_binary_float32_embeddings_are_checked_like_lists():
    """embedding_problems on binary float32 rows: the list rules, and the bytes read back exactly."""
    import pyarrow as pa

    from pipeline.kernels.kmeans import embedding_problems, float32_blobs

    f32 = lambda *v: np.array(v, "<f4").tobytes()  # noqa: E731
    rows = [f32(1, 2, 3), None, f32(0, 0, 0), f32(1, 2), b"abcde", f32(1, float("nan"), 2), f32(4, float("inf"), 0), f32(-1.5, 0, 2**-20)]
    valid, why, x = embedding_problems(pa.array(rows, pa.binary()), 3)
    assert valid.tolist() == [True, False, False, False, False, False, False, True]
    assert why == [None, "no embedding", "zero vector", "dimension 2, expected 3", "5 bytes, not float32 values",
                   "NaN or infinite value", "NaN or infinite value", None]
    assert x.dtype == np.float32 and x.tolist() == [[1, 2, 3], [-1.5, 0, 2**-20]]
    # float32_blobs writes valid rows back to back, null elsewhere; a slice reads the same rows
    blobs = float32_blobs(np.array([[1, 2, 3], [4, 5, 6]], np.float32), np.array([True, False, True]))
    assert blobs.to_pylist() == [f32(1, 2, 3), None, f32(4, 5, 6)]
    valid, why, x = embedding_problems(blobs.slice(1), 3)
    assert valid.tolist() == [False, True] and why == ["no embedding", None] and x.tolist() == [[4, 5, 6]]
    whole = float32_blobs(np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], np.float32), np.ones(3, bool))
    assert embedding_problems(whole.slice(1), 3)[2].tolist() == [[4, 5, 6], [7, 8, 9]]  # (all rows whole: a view)


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
    # each matrix row is its uid's embedding (write_embeddings names row i "u%05d")
    np.testing.assert_array_equal(one[0], x[[int(u[1:]) for u in one[1]]])
    other_seed = sample_embeddings(df, 6, 40, 4)[1]
    assert other_seed != one[1]


@pytest.fixture(scope="module")
def clustered(spark, tmp_path_factory):
    from pipeline.api import run_cluster

    tmp = tmp_path_factory.mktemp("cluster")
    x = mixture(500, DIM, centers=5, seed=3)
    uids = write_embeddings(tmp / "emb.parquet", x, rows=BAD_ROWS)
    cfg = PipelineConfig(seed=11, cluster=ClusterConfig(k=5, niter=10, sample_per_centroid=60, top_m=3))
    run_root = str(tmp / "run")
    result = run_cluster(spark, str(tmp / "emb.parquet"), run_root, cfg)
    return {"x": x, "uids": uids, "run": run_root, "result": result, "cfg": cfg, "input": str(tmp / "emb.parquet")}


def test_run_cluster_assigns_every_valid_row_to_its_nearest_centroid(spark, clustered):
    import faiss

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
    assert stats["faiss_version"] and stats["spherical"] is True
    # trained on a GPU exactly when faiss sees one (the stage has no device setting: auto)
    assert stats["gpu"] is (faiss.get_num_gpus() > 0)
    assert_matches_contract(spark.read.parquet(f"{clustered['run']}/cluster/data"), "cluster")
    # carry_input (default): the embedding as float32 bytes, then the scalar columns;
    # text_embedding, another float array, stays in the input
    assert out.columns.tolist() == ["uid", "cluster_id", "distance", "top_clusters", "top_distances", "image_embedding_f32", "text"]
    carried = np.stack([np.frombuffer(b, "<f4") for b in out.image_embedding_f32])
    np.testing.assert_array_equal(carried, clustered["x"][valid])
    assert out.text.tolist() == [f"caption {clustered['uids'][i]}" for i in valid]
    assert stats["carried"] == ["image_embedding_f32", "text"] and stats["clustered_by"] == "cluster_id"


def test_cluster_output_files_hold_whole_clusters_in_runs(clustered):
    """Each written file holds whole clusters, each as one run of rows: what prune's walk reads."""
    import glob

    import pyarrow.parquet as pq

    owner: dict[int, str] = {}
    files = sorted(glob.glob(f"{clustered['run']}/cluster/data/*.parquet"))
    for path in files:
        ids = pq.read_table(path, columns=["cluster_id"]).column("cluster_id").to_pylist()
        runs = [c for i, c in enumerate(ids) if i == 0 or c != ids[i - 1]]
        assert len(runs) == len(set(runs)), (path, runs)  # no cluster id comes back after another
        for c in runs:
            assert owner.setdefault(c, path) == path, f"cluster {c} in {owner[c]} and {path}"
    assert sorted(owner) == [0, 1, 2, 3, 4] and len(files) >= 2  # (the files are a real split)


def test_run_cluster_trains_on_the_valid_rows_with_the_smallest_seeded_hashes(spark, clustered):
    """The sample, chosen here from its definition, trained with FAISS directly, gives the stage's centroids."""
    import faiss
    from pyspark.sql import functions as F

    seed, k, n = 11, 5, 5 * 60  # the fixture's config: seed 11, k 5, 60 points per centroid
    keys = spark.read.parquet(clustered["input"]).select("uid", F.xxhash64(F.lit(seed), F.col("uid")).alias("key")).toPandas()
    bad = {clustered["uids"][i] for i, _ in BAD_ROWS}
    keys = keys[~keys.uid.isin(bad)].sort_values(["key", "uid"], ascending=True)
    assert len(keys) == 494 > n  # the limit bites
    rows = [int(u[1:]) for u in keys.uid.iloc[:n]]
    sample = np.ascontiguousarray(clustered["x"][rows], np.float32)
    sample /= np.linalg.norm(sample, axis=1, keepdims=True)
    km = faiss.Kmeans(DIM, k, niter=10, seed=seed, spherical=True, max_points_per_centroid=60, min_points_per_centroid=1)
    km.train(sample)
    stage = np.load(f"{clustered['run']}/cluster/centroids.npy")
    np.testing.assert_allclose(stage, km.centroids, atol=1e-5)
    assert clustered["result"].stats["sample_size"] == n


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
    from pipeline.api import run_cluster

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
    arrays = ["top_clusters", "top_distances"]
    assert da.drop(columns=arrays).equals(db.drop(columns=arrays))
    for col in arrays:
        assert [list(v) for v in da[col]] == [list(v) for v in db[col]], col


def test_curate_cluster_in_a_child_equals_the_api_and_logs_quietly(clustered, tmp_path):
    """`curate cluster` in a process of its own: the fixture's config as flags gives the fixture's
    centroids, and stderr carries no faiss loader lines and no Spark progress bar."""
    import subprocess
    import sys

    from tests.pipeline_runs import ROOT, child_env

    run = tmp_path / "run"
    flags = ["--k", "5", "--niter", "10", "--sample-per-centroid", "60", "--top-m", "3", "--seed", "11"]
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "cluster", "--input", clustered["input"], "--output", str(run), *flags,
         "--master", "local[1]"],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(np.load(run / "cluster" / "centroids.npy"), np.load(f"{clustered['run']}/cluster/centroids.npy"))
    assert "cluster: 500 in, 494 kept" in proc.stderr, proc.stderr[-3000:]  # our own INFO lines still show
    for noise in ("faiss.loader", "Loading faiss", "[Stage "):
        assert noise not in proc.stderr, proc.stderr[-3000:]


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
