"""Killed runs: SIGKILL the driver in the middle of a stage, or one Spark Python worker in the middle
of a task. Nothing half-written is ever visible as complete, and the outputs equal an
uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipeline_runs import child_env, complete_stages, snapshot

pytestmark = pytest.mark.slow

ROWS = 60_000


@pytest.fixture(scope="module")
def setup(tmp_path_factory, spark) -> dict:
    """A pool big enough that matching takes a few seconds, a large entry list, and the
    uninterrupted run of the same config (this process's local session)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.api import run_pipeline
    from pipeline.demo import ADJECTIVES, NOUNS
    from pipeline.registry import load_config

    tmp = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(7)
    words = np.array(NOUNS + ADJECTIVES)
    texts = [" ".join(r) for r in words[rng.integers(0, len(words), size=(ROWS, 8))]]
    texts[::997] = [""] * len(texts[::997])  # some rows for ingest to drop
    pool = tmp / "pool.parquet"
    pq.write_table(pa.table({"url": [f"http://127.0.0.1/i/{i}.jpg" for i in range(ROWS)], "caption": texts}), pool, row_group_size=ROWS // 4)
    # Tens of thousands of entries: every Python worker spends a while building its automaton.
    entries = dict.fromkeys([*NOUNS, *ADJECTIVES, *(f"{a} {b}" for a in ADJECTIVES + NOUNS for b in NOUNS)])
    (tmp / "metadata.json").write_text(json.dumps(list(entries)))
    config = tmp / "pipeline.yaml"
    config.write_text(f"""seed: 11
spark:
  shuffle_partitions: 4
  conf:
    spark.ui.showConsoleProgress: "false"
    spark.driver.extraJavaOptions: "-XX:TieredStopAtLevel=1"
run:
  input: {pool}
  stages: [ingest, match]
match:
  metadata: {tmp / "metadata.json"}
""")
    reference = tmp / "reference"
    run_pipeline(spark, load_config(config, {"run.output": str(reference)}))
    return {"tmp": tmp, "config": config, "reference": snapshot(reference)}


def start_run(setup: dict, run_dir: Path, log: Path, master: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--config", str(setup["config"]), "--output", str(run_dir), "--master", master]
    return subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=log.open("wb"), text=True, start_new_session=True)


def wait_until(what: str, check, proc: subprocess.Popen, timeout: float = 400.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc={proc.returncode}) before {what}")
        time.sleep(0.05)
    raise TimeoutError(f"no {what} after {timeout:.0f}s")


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process, from /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        out[int(entry.name)] = (ppid, cmdline)
    return out


def python_workers(driver: int) -> list[int]:
    """Spark's forked Python workers under `driver`: children of the pyspark.daemon its JVM started."""
    procs = processes()
    below, frontier = set(), {driver}
    while frontier:
        frontier = {pid for pid, (ppid, _) in procs.items() if ppid in frontier} - below
        below |= frontier
    daemons = {pid for pid in below if "pyspark.daemon" in procs[pid][1] and "pyspark.daemon" not in procs[procs[pid][0]][1]}
    return sorted(pid for pid in below if procs[pid][0] in daemons)


def end_group(proc: subprocess.Popen) -> None:
    """Nothing of a run outlives its test: its JVM and workers are in its process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def test_driver_killed_mid_stage_leaves_nothing_complete_and_the_rerun_equals_an_uninterrupted_run(setup):
    run_dir = setup["tmp"] / "killed-driver"
    proc = start_run(setup, run_dir, setup["tmp"] / "driver.log", "local[2]")
    try:
        partial = wait_until("match writing its output", lambda: list(run_dir.glob("match/data")), proc)
        os.kill(proc.pid, signal.SIGKILL)  # the Python driver; its JVM exits when its stdin closes
        proc.wait(timeout=60)
    finally:
        end_group(proc)
    assert proc.returncode == -signal.SIGKILL

    # Killed in the middle of match: its output is half-written in its final place, and not
    # complete (no marker); nothing downstream exists.
    assert complete_stages(run_dir) == ["ingest"]
    assert not (run_dir / "match" / "_COMPLETE").exists()
    assert partial[0].is_dir()
    assert not (run_dir / "match" / "stats.json").exists()

    rerun = start_run(setup, run_dir, setup["tmp"] / "rerun.log", "local[2]")
    try:
        out, _ = rerun.communicate(timeout=600)
    finally:
        end_group(rerun)
    assert rerun.returncode == 0, (setup["tmp"] / "rerun.log").read_text()[-3000:]
    assert "[complete; skipped]" in next(line for line in out.splitlines() if line.startswith("ingest:"))
    assert complete_stages(run_dir) == ["ingest", "match"]
    got = snapshot(run_dir)
    assert set(got) == {"matched", "ledger", "stats"} and got["matched"]
    assert got == setup["reference"]


def test_python_worker_killed_mid_task_is_retried_and_the_output_equals_an_uninterrupted_run(setup):
    run_dir = setup["tmp"] / "killed-worker"
    log = setup["tmp"] / "worker.log"
    # local[2,4]: two cores, and a task may fail up to 4 times (local mode's default is 1).
    proc = start_run(setup, run_dir, log, "local[2,4]")
    try:
        wait_until("match writing its output", lambda: list(run_dir.glob("match/data")), proc)
        victim = wait_until("a Python worker", lambda: python_workers(proc.pid), proc)[0]
        os.kill(victim, signal.SIGKILL)
        out, _ = proc.communicate(timeout=600)
    finally:
        end_group(proc)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "Lost task" in text, "the killed worker was not running a task"
    assert complete_stages(run_dir) == ["ingest", "match"]
    got = snapshot(run_dir)
    assert set(got) == {"matched", "ledger", "stats"} and got["matched"]
    assert got == setup["reference"]
