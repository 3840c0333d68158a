"""Spark `match` throughput on local[2] against twice the single-core kernel rate, measured in one run.

Run: .venv/bin/python bench/bench_match_spark.py [--captions N] [--entries N] [--partitions N]
     [--repeat N] [--jobs]

On the real captions under ../shared/anchors/data repeated to --captions (distinct uids) and a
--entries metadata list (WordNet + numbers + caption n-grams, as bench_match_kernel.py builds):

  kernel     Matcher.match_batch in this process on a sample, batches of 10,000: captions/s per core.
  adapter    with_entry_ids over the Parquet pool on local[2], written to Spark's no-op sink.
  stage      the whole `curate match` stage (api.run_match: read, match, ledger, two Parquet writes):
             the first call (cold) and the best of --repeat more (warm), with CPU seconds of the
             driver JVM and the Python workers beside wall time; --jobs lists the warm call's Spark
             jobs (Spark UI's REST API on 127.0.0.1) and the time between them (driver work).
  rebuild    the straightforward adapter that builds its automaton in every task (the baseline
             the per-process cache replaces), for comparison.

Each Spark figure is printed as captions/s and as a ratio against 2 x kernel (two cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from bench_match_kernel import DATA, build_metadata, load_captions  # noqa: E402
from bench_stage_vs_kernel import call_stage, tree_cpu_seconds  # noqa: E402

from pipeline.kernels.matcher import Matcher  # noqa: E402
from pipeline.stages.match import with_entry_ids  # noqa: E402


def write_pool(captions: list[str], n: int, folder: str, files: int) -> None:
    reps = -(-n // len(captions))
    texts = (captions * reps)[:n]
    for k, idx in enumerate(np.array_split(np.arange(n), files)):
        pq.write_table(
            pa.table({"uid": [f"b{i:09d}" for i in idx], "url": [f"http://x/{i}.jpg" for i in idx], "text": [texts[i] for i in idx]}),
            f"{folder}/part-{k:04d}.parquet",
        )


def rebuild_per_task(df, entries, mode="metaclip"):
    """The naive adapter: a fresh automaton in every task."""
    import pyarrow as pa
    from pyspark.sql import types as T

    shared = df.sparkSession.sparkContext.broadcast(list(entries))
    schema = T.StructType(df.schema.fields + [T.StructField("entry_ids", T.ArrayType(T.IntegerType(), False), False)])
    list_type = pa.list_(pa.field("element", pa.int32(), nullable=False))
    ti = df.columns.index("text")

    def run(batches):
        matcher = Matcher(shared.value, mode)
        for b in batches:
            off, val = matcher.match_batch(b.column(ti).to_pylist())
            ids = pa.ListArray.from_arrays(pa.array(off, pa.int32()), pa.array(val, pa.int32()), type=list_type)
            yield pa.RecordBatch.from_arrays([*b.columns, ids], schema=b.schema.append(pa.field("entry_ids", list_type, False)))

    return df.mapInArrow(run, schema)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", type=int, default=1_000_000)
    ap.add_argument("--entries", type=int, default=500_000)
    ap.add_argument("--partitions", type=int, default=16, help="input Parquet files (= Spark tasks)")
    ap.add_argument("--kernel-sample", type=int, default=200_000)
    ap.add_argument("--skip-rebuild", action="store_true")
    ap.add_argument("--repeat", type=int, default=2, help="warm stage calls after the cold one (best taken)")
    ap.add_argument("--jobs", action="store_true", help="list the warm stage call's Spark jobs and log lines")
    ap.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="a Spark setting to try (repeatable)")
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"bench_match_spark: needs the real captions under {DATA}; not found")

    by_source = load_captions()
    captions = [c for cs in by_source.values() for c in cs]
    tmp = tempfile.mkdtemp(prefix="bench-match-")
    entries, notes = build_metadata(captions, args.entries, tmp)
    print(f"captions: {len(captions):,} real, repeated to {args.captions:,}; metadata: {len(entries):,} entries")
    print("\n".join(notes))
    pool = f"{tmp}/pool"
    os.makedirs(pool)
    write_pool(captions, args.captions, pool, args.partitions)

    # kernel, single process
    matcher = Matcher(entries)
    sample = (captions * (-(-args.kernel_sample // len(captions))))[: args.kernel_sample]
    start, cpu0 = time.perf_counter(), tree_cpu_seconds()
    for i in range(0, len(sample), 10_000):
        matcher.match_batch(sample[i : i + 10_000])
    kernel = len(sample) / (time.perf_counter() - start)
    kernel_cpu = (tree_cpu_seconds() - cpu0) / len(sample)  # CPU seconds per caption
    del matcher

    from pipeline.api import run_match
    from pipeline.core.config import SparkConfig
    from pipeline.core.spark import get_spark
    from pipeline.registry import PipelineConfig
    from pipeline.stages.match import MatchConfig

    # One task per input file, as on a cluster with many splits (Spark would otherwise pack
    # these small files into as few tasks as there are cores).
    pool_bytes = sum(os.path.getsize(os.path.join(pool, f)) for f in os.listdir(pool))
    conf = {
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.files.maxPartitionBytes": str(pool_bytes // args.partitions + 1),
        "spark.sql.files.openCostInBytes": "1",
        **dict(kv.split("=", 1) for kv in args.conf),
    }
    spark = get_spark(SparkConfig(master="local[2]", driver_memory="6g", conf=conf, ui=args.jobs), "bench-match")
    meta_path = f"{tmp}/metadata.json"
    with open(meta_path, "w") as fh:
        json.dump(entries, fh)
    df = spark.read.parquet(pool)
    tasks = df.rdd.getNumPartitions()
    # Warm-up: start both Python workers and build their automata, as any long job would once
    # (two concurrent tasks, so that each of local[2]'s workers builds one; a single task
    # would leave the second worker's build inside the timed run).
    with_entry_ids(df.limit(4000).repartition(2), entries).write.format("noop").mode("overwrite").save()

    def timed(action) -> float:
        start = time.perf_counter()
        action()
        return args.captions / (time.perf_counter() - start)

    adapter = timed(lambda: with_entry_ids(df, entries).write.format("noop").mode("overwrite").save())
    cfg = PipelineConfig(match=MatchConfig(metadata=meta_path))
    calls = [
        call_stage(spark, f"match-{i}", lambda: run_match(spark, pool, f"{tmp}/run", cfg, force=True), args.jobs and i == args.repeat)
        for i in range(args.repeat + 1)
    ]
    cold = args.captions / calls[0][0]
    best = min(calls[1:] or calls, key=lambda c: c[0])
    stage, stage_cpu = args.captions / best[0], best[3] / args.captions
    rebuild = None
    if not args.skip_rebuild:
        rebuild = timed(lambda: rebuild_per_task(df, entries).write.format("noop").mode("overwrite").save())

    two = 2 * kernel
    print()
    print(f"{'what':<44}{'captions/s':>14}{'vs 2 x kernel':>16}")
    print(f"{'kernel, 1 process (per core)':<44}{kernel:>14,.0f}{'':>16}")
    print(f"{'Spark adapter, local[2], noop sink':<44}{adapter:>14,.0f}{adapter / two:>16.2f}")
    print(f"{'curate match stage, local[2], Parquet + ledger':<44}{stage:>14,.0f}{stage / two:>16.2f}"
          f"   (warm, best of {max(args.repeat, 1)}; cold {cold:,.0f}/s, {cold / two:.2f})")
    print(f"{'  CPU seconds per 1M captions: stage / kernel':<44}{stage_cpu * 1e6:>14.1f}{kernel_cpu / stage_cpu:>16.2f}"
          f"   (kernel {kernel_cpu * 1e6:.1f})")
    if rebuild:
        print(f"{'naive adapter (automaton built per task)':<44}{rebuild:>14,.0f}{rebuild / two:>16.2f}")
    print(f"({args.captions:,} captions in {tasks} tasks; {len(entries):,} entries; machine cores: {os.cpu_count()})")
    spark.stop()


if __name__ == "__main__":
    main()
