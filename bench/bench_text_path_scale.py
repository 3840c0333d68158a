"""Match + count + balance on local[2] at growing pool sizes: wall time and peak memory per size.

Run: .venv/bin/python bench/bench_text_path_scale.py [--sizes 1000000,3000000,10000000] [--entries N]

Each size runs in a fresh process (fresh JVM and Python workers) over a Parquet pool of the
real captions under ../shared/anchors/data repeated with distinct uids, against a metadata
list built as in bench_match_kernel.py. Printed per size: wall seconds per stage, captions/s
through the three stages, and the peak resident memory of the driver JVM, the driver Python
process and the largest Python worker. Memory bounded by partition size, not pool size,
shows as flat memory columns while the size grows; the last column is the ratio of each
size's peak worker memory to the smallest size's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))


def one_size(pool: str, meta: str, out: str) -> dict:
    """Runs in the child process: the three stages, timed, under a memory sampler."""
    from procmem import PeakMemory

    from pipeline.api import run_balance, run_count, run_match
    from pipeline.core.config import SparkConfig
    from pipeline.core.spark import get_spark
    from pipeline.registry import PipelineConfig
    from pipeline.stages.balance import BalanceConfig
    from pipeline.stages.match import MatchConfig

    cfg = PipelineConfig(
        seed=0,
        spark=SparkConfig(master="local[2]", driver_memory="4g", conf={"spark.ui.showConsoleProgress": "false"}),
        match=MatchConfig(metadata=meta),
        balance=BalanceConfig(tail_fraction=0.06),
    )
    with PeakMemory() as mem:
        spark = get_spark(cfg.spark, "bench-scale")
        times = {}
        for name, call in (
            ("match", lambda: run_match(spark, pool, out, cfg, force=True)),
            ("count", lambda: run_count(spark, out, out, cfg, force=True)),
            ("balance", lambda: run_balance(spark, out, None, out, cfg, force=True)),
        ):
            start = time.perf_counter()
            result = call()
            times[name] = time.perf_counter() - start
        kept = result.stats["kept"]
        spark.stop()
    return {"times": times, "peak": mem.peak, "kept": kept}


def write_pool(captions: list[str], n: int, folder: str, rows_per_file: int = 250_000) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    for k, lo in enumerate(range(0, n, rows_per_file)):
        hi = min(n, lo + rows_per_file)
        pq.write_table(
            pa.table(
                {
                    "uid": [f"s{i:010d}" for i in range(lo, hi)],
                    "url": [f"http://x/{i}.jpg" for i in range(lo, hi)],
                    "text": [captions[i % len(captions)] for i in range(lo, hi)],
                }
            ),
            f"{folder}/part-{k:05d}.parquet",
            compression="zstd",
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,3000000,10000000")
    ap.add_argument("--entries", type=int, default=500_000)
    ap.add_argument("--child", nargs=3, metavar=("POOL", "META", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(one_size(*args.child)))
        return

    from bench_match_kernel import DATA, build_metadata, load_captions

    if not DATA.exists():
        sys.exit(f"bench_text_path_scale: needs the real captions under {DATA}; not found")
    captions = [c for cs in load_captions().values() for c in cs]
    tmp = tempfile.mkdtemp(prefix="bench-scale-")
    entries, notes = build_metadata(captions, args.entries, tmp)
    meta = f"{tmp}/metadata.json"
    with open(meta, "w") as fh:
        json.dump(entries, fh)
    print(f"captions: {len(captions):,} real; metadata: {len(entries):,} entries")
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        pool = f"{tmp}/pool-{size}"
        write_pool(captions, size, pool)
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", pool, meta, f"{tmp}/run-{size}"], capture_output=True, text=True
        )
        wall = time.perf_counter() - start
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"size {size} failed:\n{proc.stderr[-4000:]}")
        result = json.loads(line[len("RESULT ") :])
        rows.append((size, wall, result))
        print(f"  {size:,} done in {wall:.0f}s", flush=True)
        subprocess.run(["rm", "-rf", pool, f"{tmp}/run-{size}"], check=False)

    base = rows[0][2]["peak"]["python_worker_max"] or 1.0
    print()
    print(f"{'captions':>12}{'match s':>9}{'count s':>9}{'balance s':>11}{'caps/s':>10}{'kept':>12}"
          f"{'JVM MB':>9}{'driver py MB':>14}{'worker MB':>11}{'workers MB':>12}{'worker x':>10}")
    for size, _wall, r in rows:
        t, p = r["times"], r["peak"]
        total = sum(t.values())
        print(f"{size:>12,}{t['match']:>9.1f}{t['count']:>9.1f}{t['balance']:>11.1f}{size / total:>10,.0f}{r['kept']:>12,}"
              f"{p['jvm']:>9.0f}{p['driver_python']:>14.0f}{p['python_worker_max']:>11.0f}{p['python_workers_total']:>12.0f}"
              f"{p['python_worker_max'] / base:>10.2f}")
    print(f"(local[2], {os.cpu_count()} cores; JVM = driver + executors in local mode; worker = largest Python worker)")


if __name__ == "__main__":
    main()
