"""The curation pipeline as an Airflow 3 DAG: one spark-submit per stage, in pipeline order.

Each task submits `jobs/<stage>.py` with the Spark connection named by the `conn_id`
param (default `spark_default`; its host is the master: `local[4]`, `spark://HOST:7077`,
`yarn`, `k8s://...`). A stage commits atomically and skips itself when its output is
already complete for the same input and config, so a retry, or a whole rerun after a crash,
redoes only what is missing. Stages left out of the `stages` param are skipped, and the
next ones still run (trigger rule `none_failed`).

Schedule: none. A curation run is triggered for one pool and one run folder
(`airflow dags trigger curate_pipeline --conf '{"input": ..., "run_dir": ..., "config": ...}'`);
set `schedule="@weekly"` for a pool that is refreshed on a cadence.

The DAG imports only Airflow and its Spark provider, not `pipeline`: the project runs in
the Python that spark-submit starts (the `python` param becomes PYSPARK_PYTHON), so
Airflow and the project can live in separate environments.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Param, chain
from airflow.sdk.exceptions import AirflowSkipException

# Pipeline order (pipeline.registry.STAGES; a test checks they agree).
STAGES = ("ingest", "match", "count", "balance", "download", "embed", "filter", "cluster", "prune", "export", "report")
TEXT_STAGES = ["ingest", "match", "count", "balance", "report"]
# jobs/ beside this folder, unless the DAG file was copied elsewhere: then set CURATE_JOBS_DIR.
JOBS_DIR = os.environ.get("CURATE_JOBS_DIR", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class StageSubmitOperator(SparkSubmitOperator):
    """spark-submit of one stage's job; skipped when the stage is not in the run's `stages` param.

    The connection id is a template too, so a DAG run can pick its cluster.
    """

    template_fields = (*SparkSubmitOperator.template_fields, "_conn_id")

    def __init__(self, *, stage: str, **kwargs) -> None:
        super().__init__(task_id=stage, name=f"curate-{stage}", application=f"{{{{ params.jobs_dir }}}}/{stage}.py", **kwargs)
        self.stage = stage

    def execute(self, context):
        if self.stage not in context["params"]["stages"]:
            raise AirflowSkipException(f"{self.stage} is not in this run's stages")
        return super().execute(context)


def stage_args(stage: str) -> list[str]:
    """The job's command line, templated from the DAG params (a list: no shell quoting)."""
    if stage == "ingest":
        return ["--input", "{{ params.input }}", "--output", "{{ params.run_dir }}", "--config", "{{ params.config }}"]
    if stage == "report":  # reads the whole run folder; the concept/accuracy files come from the config
        return ["--output", "{{ params.run_dir }}", "--config", "{{ params.config }}"]
    return ["--input", "{{ params.run_dir }}", "--output", "{{ params.run_dir }}", "--config", "{{ params.config }}"]


with DAG(
    dag_id="curate_pipeline",
    description="Image-text curation: ingest, MetaCLIP match/count/balance, download, embed, filter, cluster, prune, export, report",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    tags=["curation", "spark"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5), "retry_exponential_backoff": True},
    params={
        "input": Param("", type="string", description="the raw pool (file or folder) to ingest"),
        "run_dir": Param(type="string", minLength=1, description="the run folder every stage reads and writes"),
        "config": Param(type="string", minLength=1, description="the pipeline YAML config (as for `curate run`)"),
        "stages": Param(
            TEXT_STAGES, type="array", items={"type": "string", "enum": list(STAGES)},
            description="stages to run; the others are skipped",
        ),
        "conn_id": Param("spark_default", type="string", description="the Spark connection (its host is the master)"),
        "python": Param("python3", type="string", description="PYSPARK_PYTHON: the Python with the project installed"),
        "py_files": Param("", type="string", description="spark-submit --py-files (e.g. a zip of pipeline/ and schemas/)"),
        "jobs_dir": Param(JOBS_DIR, type="string", description="the folder holding jobs/<stage>.py"),
        "properties_file": Param(
            "", type="string",
            description="spark-submit --properties-file: Spark settings (spark.sql.shuffle.partitions, memory, ...)",
        ),
    },
) as dag:
    chain(*[
        StageSubmitOperator(
            stage=stage,
            conn_id="{{ params.conn_id }}",
            application_args=stage_args(stage),
            py_files="{{ params.py_files }}",
            env_vars={"PYSPARK_PYTHON": "{{ params.python }}"},
            properties_file="{{ params.properties_file }}",
            trigger_rule="none_failed",
            verbose=False,
        )
        for stage in STAGES
    ])
