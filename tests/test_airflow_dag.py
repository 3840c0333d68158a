"""The Airflow 3 DAG in a real Airflow: it imports without errors, has the pipeline's task graph, and a
`dag.test()` run of the text path against local Spark succeeds.

Airflow lives in its own virtual environment (`.venv-airflow`, made by scripts/setup.sh): its Spark
provider requires `pyspark-client`, which installs over pyspark's own modules. So these tests run
their Airflow side in that environment's Python, with AIRFLOW_HOME and a SQLite metadata DB in a
temporary folder; the Spark jobs run in the project's Python (spark-submit from .venv/bin).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import build_parser
from pipeline.registry import STAGES, TEXT_STAGES
from tests.pipeline_runs import ROOT, complete_stages, write_text_setup

AIRFLOW_PY = ROOT / ".venv-airflow" / "bin" / "python"
DAG_FOLDER = ROOT / "jobs" / "airflow"
DAG_ID = "curate_pipeline"
# Small jobs: few shuffle partitions, no UI, and the JVM's quick (C1) compiler only, which
# takes a third less CPU than the full tiered compiler on jobs this short.
SPARK_PROPERTIES = """spark.sql.shuffle.partitions 4
spark.ui.enabled false
spark.driver.extraJavaOptions -XX:TieredStopAtLevel=1
"""

pytestmark = pytest.mark.skipif(
    not AIRFLOW_PY.exists(), reason=f"{AIRFLOW_PY} missing: run scripts/setup.sh (it builds the Airflow environment)"
)


def airflow_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYSPARK_GATEWAY"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FOLDER),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        # The Spark connection, as Airflow reads connections from the environment.
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        # spark-submit on the PATH, as the operator looks it up; pyspark's own, from the project's venv.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "SPARK_LOCAL_IP": "127.0.0.1",
    })
    return env


def in_airflow(home: Path, script: str, timeout: int = 300) -> dict:
    """Run `script` in the Airflow environment; it prints one JSON line last."""
    proc = subprocess.run(
        [str(AIRFLOW_PY), "-c", script], env=airflow_env(home), cwd=home, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("airflow")
    proc = subprocess.run(
        [str(AIRFLOW_PY.parent / "airflow"), "db", "migrate"], env=airflow_env(home), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return home


LOAD = f"""
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={str(DAG_FOLDER)!r})
dag = bag.dags.get({DAG_ID!r})
"""


def test_dag_imports_with_the_pipeline_task_graph(airflow_home):
    got = in_airflow(airflow_home, LOAD + """
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dag_ids": sorted(bag.dag_ids),
    "tasks": [t.task_id for t in dag.topological_sort()],
    "edges": sorted([t.task_id, d] for t in dag.tasks for d in t.downstream_task_ids),
    "operators": sorted({type(t).__mro__[1].__name__ for t in dag.tasks}),
    "applications": {t.task_id: t.application for t in dag.tasks},
    "args": {t.task_id: t.application_args for t in dag.tasks},
    "retries": sorted({t.retries for t in dag.tasks}),
    "conn_ids": sorted({t._conn_id for t in dag.tasks}),
    "trigger_rules": sorted({getattr(t.trigger_rule, "value", t.trigger_rule) for t in dag.tasks}),
    "schedule": type(dag.timetable).__name__,
    "params": dag.params.dump(),
}))
""")
    assert got["errors"] == {}
    assert got["dag_ids"] == [DAG_ID]
    assert got["tasks"] == list(STAGES)
    assert got["edges"] == sorted([a, b] for a, b in zip(STAGES[:-1], STAGES[1:], strict=True))
    assert got["operators"] == ["SparkSubmitOperator"]
    for stage in STAGES:
        assert got["applications"][stage] == "{{ params.jobs_dir }}/" + f"{stage}.py"
        assert isinstance(got["args"][stage], list) and "{{ params.run_dir }}" in got["args"][stage]
        assert (ROOT / "jobs" / f"{stage}.py").is_file(), f"jobs/{stage}.py missing"
        # Each job's arguments are ones its `curate <stage>` parser takes.
        filled = [a.replace("{{ params.", "P_").replace(" }}", "") for a in got["args"][stage]]
        build_parser().parse_args([stage, *filled])
    assert got["retries"] == [2]
    assert got["conn_ids"] == ["{{ params.conn_id }}"]
    assert got["trigger_rules"] == ["none_failed"]
    assert got["schedule"] == "NullTimetable"
    assert got["params"]["stages"] == list(TEXT_STAGES)
    assert got["params"]["conn_id"] == "spark_default"
    assert got["params"]["jobs_dir"] == str(ROOT / "jobs")


@pytest.mark.slow
def test_dag_test_runs_the_text_path_on_local_spark(airflow_home, spark, tmp_path):
    from pipeline.core.ledger import check_accounting

    config, pool = write_text_setup(tmp_path, rows=120)
    run_dir = tmp_path / "run"
    properties = tmp_path / "spark.properties"
    properties.write_text(SPARK_PROPERTIES)
    conf = {
        "input": pool, "run_dir": str(run_dir), "config": str(config), "python": sys.executable,
        "properties_file": str(properties),
    }
    got = in_airflow(airflow_home, LOAD + f"""
for task in dag.tasks:
    task.retries = 0  # a failure fails the test now instead of waiting for the retry
run = dag.test(run_conf={conf!r})
tis = run.get_task_instances()
value = lambda state: getattr(state, "value", state)
print(json.dumps({{"state": value(run.state), "tasks": {{ti.task_id: value(ti.state) for ti in tis}}}}))
""", timeout=600)
    assert got["state"] == "success", got
    skipped = set(STAGES) - set(TEXT_STAGES)
    assert got["tasks"] == {s: "skipped" if s in skipped else "success" for s in STAGES}
    assert complete_stages(run_dir) == ["balance", "count", "ingest", "match", "reports"]
    assert (run_dir / "reports" / "report.html").is_file()
    accounting = check_accounting(spark, str(run_dir), ["ingest", "match", "balance"])
    assert accounting["inputs"] == 120
    record = json.loads((run_dir / "run.json").read_text())
    assert record["spark_master"] == "local[2]"
    assert [c["command"][0] for c in record["invocations"]] == ["ingest", "match", "count", "balance", "report"]
