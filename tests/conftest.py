"""Shared fixtures: one local SparkSession for the whole test run, paths to the shared anchor data;
the run's network guard and the rule that tests needing ../shared run when it is there."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

# Importing the package switches off dependencies' update checks, before a test module imports them.
import pipeline  # noqa: F401
from tests.netguard import curate_netguard as netguard

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "anchors"
ANCHORS = SHARED / "data"
NETGUARD_DIR = Path(netguard.__file__).parent


def anchor(rel: str) -> Path:
    """A file under ../shared/anchors/data. Skips the test when ../shared/anchors is absent (a
    clone on its own); where it is present a missing file fails the test, it is not skipped."""
    path = ANCHORS / rel
    if not path.exists():
        if SHARED.is_dir():
            pytest.fail(f"shared anchor data missing from a present {SHARED}: {path}", pytrace=False)
        pytest.skip(f"shared anchor data not present: {path}")
    return path


# --------------------------------------------------------------------------- network guard
# Tests send nothing outside 127.0.0.0/8 and ::1 (tests/netguard/curate_netguard.py): the guard
# runs in this process and, through tests/netguard/sitecustomize.py on PYTHONPATH, in every Python
# child. Each violation is a line in one log; a test (or collected module) during which a line
# appeared fails, even when the library that tried swallowed the guard's error.
_guard = {"log": None, "read": 0, "env": {}}


def pytest_configure(config):
    fd, log = tempfile.mkstemp(prefix="curate-netguard-", suffix=".jsonl")
    os.close(fd)
    _guard.update(log=log, read=0, env={k: os.environ.get(k) for k in (netguard.LOG_ENV, "PYTHONPATH")})
    os.environ[netguard.LOG_ENV] = log
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NETGUARD_DIR), os.environ.get("PYTHONPATH")]))
    netguard.install()


def pytest_unconfigure(config):
    netguard.uninstall()
    for key, value in _guard["env"].items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if _guard["log"]:
        Path(_guard["log"]).unlink(missing_ok=True)


def new_violations() -> list[dict]:
    """Violations logged (by this process or any child) since the last call."""
    if not _guard["log"]:
        return []
    with open(_guard["log"], "rb") as f:
        f.seek(_guard["read"])
        data = f.read()
    complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next call
    _guard["read"] += len(complete)
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def _describe(violations: list[dict]) -> str:
    lines = [f"network guard: {len(violations)} attempt(s) to reach outside loopback"]
    for v in violations:
        lines.append(f"  {v['what']} {v['target']}  (pid {v['pid']}: {v['argv'][:120]})")
        lines += [f"      {frame}" for frame in v["stack"][-5:]]
    return "\n".join(lines)


def _fail_report(report, message: str) -> None:
    report.outcome = "failed"
    report.longrepr = message if not report.longrepr else f"{report.longrepr}\n\n{message}"


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """Importing a test module that reaches out (img2dataset -> albumentations) is a collection error."""
    report = yield
    found = new_violations()
    if found:
        _fail_report(report, _describe(found))
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase of a test (setup, call, teardown) fails on traffic logged during it; a skip of a
    test that needs ../shared is a failure where ../shared is present."""
    report = yield
    found = new_violations()
    if found:
        _fail_report(report, _describe(found))
    elif report.skipped and not hasattr(report, "wasxfail") and SHARED.is_dir() and _needs_shared(item, report):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped although {SHARED} is present (a test needing ../shared must run here): {reason}"
    return report


def _needs_shared(item, report) -> bool:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return item.get_closest_marker("shared") is not None or "shared/anchors" in reason or "shared anchor" in reason


def pytest_sessionfinish(session, exitstatus):
    """Traffic after the last test (a session fixture's teardown) fails the run too."""
    found = new_violations()
    if found:
        session.config.get_terminal_writer().line("\n" + _describe(found), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def spark():
    from pipeline.core.config import SparkConfig
    from pipeline.core.spark import get_spark

    session = get_spark(
        SparkConfig(
            master="local[2]",
            driver_memory="2g",
            shuffle_partitions=4,
            conf={"spark.ui.showConsoleProgress": "false", "spark.sql.adaptive.enabled": "false"},
        ),
        app_name="curate-tests",
    )
    yield session
    session.stop()


def build_text_run(spark, tmp, columns: dict, entries: list[str], concepts: dict, t: int) -> str:
    """A run folder through ingest, match, count (with concepts) and balance at threshold t."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.api import run_balance, run_count, run_ingest, run_match
    from pipeline.registry import PipelineConfig
    from pipeline.stages.balance import BalanceConfig
    from pipeline.stages.count import CountConfig
    from pipeline.stages.match import MatchConfig

    pq.write_table(pa.table(columns), tmp / "pool.parquet")
    (tmp / "m.json").write_text(json.dumps(entries))
    (tmp / "c.json").write_text(json.dumps(concepts))
    cfg = PipelineConfig(
        match=MatchConfig(metadata=str(tmp / "m.json")), count=CountConfig(concepts=str(tmp / "c.json")), balance=BalanceConfig(t=t)
    )
    run = str(tmp / "run")
    run_ingest(spark, str(tmp / "pool.parquet"), run, cfg)
    run_match(spark, run, run, cfg)
    run_count(spark, run, run, cfg)
    run_balance(spark, run, None, run, cfg)
    return run


@pytest.fixture(scope="session")
def text_path_run(spark, tmp_path_factory):
    """One local-mode `curate run` of the text path on a small demo pool, shared by the runner,
    standalone-cluster and fault tests: its config, pool, run folder and a snapshot taken at once
    (tests that rerun stages in the folder must leave it as they found it)."""
    from pipeline.api import run_pipeline
    from pipeline.registry import load_config
    from tests.pipeline_runs import snapshot, write_text_setup

    tmp = tmp_path_factory.mktemp("text-path-run")
    config, pool = write_text_setup(tmp, rows=150)
    cfg = load_config(config, {"run.output": str(tmp / "run")})
    result = run_pipeline(spark, cfg)
    return {"tmp": tmp, "config": config, "pool": pool, "cfg": cfg, "run": tmp / "run", "result": result, "snapshot": snapshot(tmp / "run")}
