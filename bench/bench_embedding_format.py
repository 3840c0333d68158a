"""Embedding storage formats compared: list<float32> vs fixed_size_list<float32, dim> vs binary float32.

Seeded unit vectors (uid, image_embedding, text) are written with pyarrow (zstd, as the stages
write), one file per format, and each is timed the ways the pipeline and its users read it:

  size      bytes on disk
  scan      pyarrow reads the embedding column (no conversion)
  numpy     pyarrow reads it into an (n, dim) float32 matrix (list: the flattened values reshaped,
            zero-copy; binary: the data buffer viewed as float32)
  duckdb    DuckDB over the file: sum of each row's dot product with itself, in SQL where the
            format allows (list_dot_product on FLOAT[]); a binary column is a BLOB to SQL, so
            its rows are fetched as Arrow and decoded in numpy
  spark     Spark reads the column and a mapInArrow turns each batch into numpy and sums the
            squares (what cluster's and prune's adapters do first), best of --repeat after a
            warm-up

Parquet has no fixed-size list type: pyarrow writes fixed_size_list as a list and restores it
from the Arrow schema it stores in the file, so Spark and DuckDB read the same list as for
list<float32>. Each figure is the best of --repeat runs, in one process.

    .venv/bin/python bench/bench_embedding_format.py --n 200000,1000000
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EMB = "image_embedding"
FORMATS = ("list", "fixed_size_list", "binary")


def vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def column(x: np.ndarray, fmt: str) -> pa.Array:
    """The matrix as one Arrow column of the given format."""
    n, dim = x.shape
    flat = pa.array(x.ravel())
    if fmt == "list":
        return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * dim), flat)
    if fmt == "fixed_size_list":
        return pa.FixedSizeListArray.from_arrays(flat, dim)
    offsets = pa.py_buffer((np.arange(n + 1, dtype=np.int32) * (dim * 4)).tobytes())
    return pa.Array.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(x.tobytes())])


def to_matrix(col: pa.Array | pa.ChunkedArray, dim: int) -> np.ndarray:
    """Any of the three formats as an (n, dim) float32 matrix (no nulls)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        width = np.int64 if pa.types.is_large_binary(col.type) else np.int32
        offsets = np.frombuffer(col.buffers()[1], width)[col.offset : col.offset + len(col) + 1]
        data = np.frombuffer(col.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
        return data.view(np.float32).reshape(len(col), dim)
    return pc.list_flatten(col).to_numpy().reshape(len(col), dim)


def best(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def duckdb_sum(path: str, fmt: str, dim: int) -> float:
    import duckdb

    con = duckdb.connect()
    if fmt == "binary":  # a BLOB to SQL: fetch as Arrow, decode in numpy
        rel = con.sql(f"SELECT {EMB} FROM read_parquet('{path}')")
        table = rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
        x = to_matrix(table.column(0), dim)
        return float(np.einsum("ij,ij->", x, x, dtype=np.float64))
    return float(con.execute(f"SELECT sum(list_dot_product({EMB}, {EMB})) FROM read_parquet('{path}')").fetchone()[0])


def spark_sum(spark, path: str, dim: int) -> float:
    from pyspark.sql import types as T

    def squares(batches):
        for batch in batches:
            x = to_matrix(batch.column(0), dim)
            yield pa.RecordBatch.from_arrays([pa.array([float(np.einsum("ij,ij->", x, x, dtype=np.float64))])], names=["s"])

    rows = spark.read.parquet(path).select(EMB).mapInArrow(squares, T.StructType([T.StructField("s", T.DoubleType())])).collect()
    return float(sum(r["s"] for r in rows))


def measure(spark, work: str, n: int, dim: int, repeat: int, seed: int) -> None:
    x = vectors(n, dim, seed)
    uids = pa.array([f"{i:012d}" for i in range(n)])
    text = pa.array([f"caption {i}" for i in range(n)])
    want = float(np.einsum("ij,ij->", x, x, dtype=np.float64))
    print(f"\n{n:,} x {dim} float32 (zstd, 64k-row groups; best of {repeat}; load average {os.getloadavg()[0]:.1f})")
    print(f"{'format':>16} {'file MiB':>9} {'scan s':>7} {'numpy s':>8} {'duckdb s':>9} {'spark s':>8}  duckdb reads it as")
    for fmt in FORMATS:
        path = os.path.join(work, f"{fmt}-{n}.parquet")
        pq.write_table(pa.table({"uid": uids, EMB: column(x, fmt), "text": text}), path, compression="zstd", row_group_size=1 << 16)
        size = os.path.getsize(path) / 2**20
        scan_s, _ = best(lambda: pq.read_table(path, columns=[EMB]), repeat)  # noqa: B023
        numpy_s, m = best(lambda: to_matrix(pq.read_table(path, columns=[EMB]).column(0), dim), repeat)  # noqa: B023
        assert np.array_equal(m, x), fmt  # (the same values back, in order)
        duck_s, got = best(lambda: duckdb_sum(path, fmt, dim), repeat)  # noqa: B023
        assert abs(got - want) < 1e-3 * n, (fmt, got, want)
        spark_sum(spark, path, dim)  # warm-up: the file's first read, the Python workers
        spark_s, got = best(lambda: spark_sum(spark, path, dim), repeat)  # noqa: B023
        assert abs(got - want) < 1e-3 * n, (fmt, got, want)
        import duckdb

        sql_type = duckdb.connect().execute(f"DESCRIBE SELECT {EMB} FROM read_parquet('{path}')").fetchall()[0][1]
        print(f"{fmt:>16} {size:>9.1f} {scan_s:>7.2f} {numpy_s:>8.2f} {duck_s:>9.2f} {spark_s:>8.2f}  {sql_type}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="200000,1000000", help="rows, comma-separated")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--master", default="local[2]")
    args = ap.parse_args()

    import duckdb
    import pyspark

    from pipeline.core.config import SparkConfig
    from pipeline.core.spark import get_spark

    print(f"python {platform.python_version()}, pyarrow {pa.__version__}, duckdb {duckdb.__version__}, "
          f"pyspark {pyspark.__version__}, numpy {np.__version__}; {os.cpu_count()} cores, Spark {args.master}")
    spark = get_spark(SparkConfig(master=args.master, driver_memory="4g", shuffle_partitions=8, conf={"spark.ui.showConsoleProgress": "false"}))
    work = tempfile.mkdtemp(prefix="bench-embedding-format-")
    try:
        for n in (int(v) for v in args.n.split(",")):
            measure(spark, work, n, args.dim, args.repeat, args.seed)
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
