"""A real multi-process Spark cluster: a standalone master and a worker on 127.0.0.1, the text path
spark-submitted to it (`jobs/run.py`, the package shipped with --py-files), equal to a local-mode run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.pipeline_runs import ROOT, child_env, complete_stages, package_zip, snapshot

pytestmark = pytest.mark.slow
# The JVM's quick (C1) compiler only: a third less CPU on jobs this short.
QUICK_JIT = "-XX:TieredStopAtLevel=1"


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def master_state(webui: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{webui}/json/", timeout=5) as r:
        return json.loads(r.read())


def wait_for(what: str, check, procs: list[subprocess.Popen], logs: list[Path], timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[:3]} exited with {p.returncode} while waiting for {what}:\n" + "\n".join(
                    log.read_text()[-3000:] for log in logs))
        try:
            value = check()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def stop(procs: list[subprocess.Popen]) -> None:
    """Stop each daemon's process group (the worker's executors are in the worker's)."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
        try:  # anything left in the group (an executor that outlived its worker)
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    """A standalone master and one worker (2 cores, 1 GiB), started from pyspark's own classes."""
    tmp = tmp_path_factory.mktemp("standalone")
    spark_class = str(spark_home() / "bin" / "spark-class")
    port, webui, worker_ui = free_port(), free_port(), free_port()
    env = child_env(SPARK_HOME=str(spark_home()), SPARK_WORKER_DIR=str(tmp / "work"), SPARK_DAEMON_JAVA_OPTS=QUICK_JIT)
    procs: list[subprocess.Popen] = []
    logs = [tmp / "master.log", tmp / "worker.log"]
    try:
        procs.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(webui)],
            env=env, stdout=logs[0].open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        ))
        wait_for("the master", lambda: master_state(webui).get("status") == "ALIVE", procs, logs)
        procs.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}", "--host", "127.0.0.1",
             "--cores", "2", "--memory", "1g", "--webui-port", str(worker_ui), "--work-dir", str(tmp / "work")],
            env=env, stdout=logs[1].open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        ))
        wait_for("the worker", lambda: master_state(webui).get("aliveworkers") == 1, procs, logs)
        yield {"master": f"spark://127.0.0.1:{port}", "webui": webui, "env": env, "work": tmp / "work"}
    finally:
        stop(procs)


def test_text_path_on_a_standalone_cluster_equals_local_mode(standalone, text_path_run, tmp_path):
    cluster_run = tmp_path / "cluster-run"
    zipped = package_zip(tmp_path / "curate.zip")
    cmd = [
        str(spark_home() / "bin" / "spark-submit"),
        "--master", standalone["master"],
        "--conf", "spark.executor.memory=512m",
        "--conf", "spark.driver.host=127.0.0.1",
        "--conf", "spark.ui.enabled=false",
        "--conf", "spark.sql.shuffle.partitions=4",
        "--conf", "spark.log.level=WARN",
        "--conf", f"spark.driver.extraJavaOptions={QUICK_JIT}",
        "--conf", f"spark.executor.extraJavaOptions={QUICK_JIT}",
        "--conf", f"spark.pyspark.python={sys.executable}",
        "--py-files", str(zipped),
        str(ROOT / "jobs" / "run.py"), "--config", str(text_path_run["config"]), "--output", str(cluster_run),
    ]
    # Run from the zip's folder, not the checkout, so the driver imports `pipeline` from the zip too.
    proc = subprocess.run(cmd, env=standalone["env"], cwd=tmp_path, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, [line for line in proc.stderr.splitlines() if "error" in line.lower()] or proc.stderr[-3000:]
    assert "accounting:" in proc.stdout, proc.stdout

    # It ran as an application of this master, with an executor on the worker.
    record = json.loads((cluster_run / "run.json").read_text())
    assert record["spark_master"] == standalone["master"]
    apps = master_state(standalone["webui"])["completedapps"]
    assert len(apps) == 1 and apps[0]["name"] == "curate", apps
    assert list((standalone["work"]).glob("app-*/*/stderr")), "no executor ran on the worker"

    # Equal to the same config's local-mode run.
    assert complete_stages(cluster_run) == ["balance", "count", "ingest", "match", "reports"]
    got, want = snapshot(cluster_run), text_path_run["snapshot"]
    assert set(want) == {"kept", "matched", "ledger", "counts", "concepts", "stats"} and want["kept"]
    for key in want:
        assert got[key] == want[key], key
    assert (cluster_run / "reports" / "report.html").is_file()
