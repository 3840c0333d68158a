"""The one place a SparkSession is built: local mode by default, spark-submit's settings win."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

from pipeline.core.config import SparkConfig

log = logging.getLogger(__name__)


class JavaMissingError(RuntimeError):
    """Spark needs a Java runtime and none was found."""


def launched_by_spark_submit() -> bool:
    # spark-submit starts the Python driver from its JVM and hands it the gateway port.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def check_java() -> None:
    """Fail with one actionable line when no Java 17+ is on the PATH."""
    java = shutil.which("java", path=os.path.join(os.environ["JAVA_HOME"], "bin")) if os.environ.get("JAVA_HOME") else None
    java = java or shutil.which("java")
    if java is None:
        raise JavaMissingError(
            "Java not found: Spark needs Java 17+; install it (apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    major = _java_major(out)
    if major is not None and major < 17:
        raise JavaMissingError(
            f"Java {major} found at {java}: Spark 4 needs Java 17+; install openjdk-17-jre-headless or set JAVA_HOME"
        )


def _java_major(version_text: str) -> int | None:
    import re

    m = re.search(r'version "(\d+)(?:\.(\d+))?', version_text)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major


def get_spark(cfg: SparkConfig | None = None, app_name: str = "curate"):
    """Return the active session, or build one from `cfg` (under spark-submit, see apply_stated)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    cfg = cfg or SparkConfig()
    builder = SparkSession.builder.appName(app_name)
    if not launched_by_spark_submit():
        check_java()
        # Python workers must run the interpreter that has this package and its dependencies.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (
            builder.master(cfg.master)
            .config("spark.driver.memory", cfg.driver_memory)
            .config("spark.ui.enabled", str(cfg.ui).lower())
            .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.parquet.compression.codec", "zstd")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            # PySpark starts its JVM as a "shell", which turns on the console progress bar: its
            # carriage-return lines cut into our log lines. Off unless spark.conf turns it on.
            .config("spark.ui.showConsoleProgress", "false")
        )
        for key, value in cfg.conf.items():
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if launched_by_spark_submit():
        apply_stated(spark, stated_settings(cfg))
    spark.sparkContext.setLogLevel("WARN")
    log.info("spark %s master=%s", spark.version, spark.sparkContext.master)
    return spark


# The named SparkConfig fields as the Spark settings they stand for.
FIELD_SETTINGS = {
    "master": "spark.master",
    "driver_memory": "spark.driver.memory",
    "shuffle_partitions": "spark.sql.shuffle.partitions",
    "ui": "spark.ui.enabled",
}


def stated_settings(cfg: SparkConfig) -> dict[str, str]:
    """The Spark settings `cfg` states: its named fields given explicitly (or unlike the defaults) and its conf map."""
    defaults = SparkConfig()
    stated = {}
    for name, key in FIELD_SETTINGS.items():
        value = getattr(cfg, name)
        # A SparkConfig built in code records nothing in `explicit`: what it changed is what it states.
        if name in cfg.explicit or value != getattr(defaults, name):
            stated[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return {**stated, **cfg.conf}  # conf after the fields, as the local builder applies them


def apply_stated(spark, settings: dict[str, str]) -> None:
    """Under spark-submit, apply the config's settings that spark-submit did not set itself.

    spark-submit's own (--conf, --master, --driver-memory, spark-defaults.conf) are in the
    SparkConf the session started from and win. The driver can still change runtime SQL
    settings; Spark refuses the rest (master, driver memory, spark.executor.*, static SQL
    settings), which belong to spark-submit: a config value unlike the running one is a warning.
    """
    from pyspark.errors import AnalysisException

    submitted = spark.sparkContext.getConf()
    for key, value in settings.items():
        if submitted.contains(key):
            log.debug("%s: spark-submit's %s wins over the config's %s", key, submitted.get(key), value)
            continue
        try:
            spark.conf.set(key, value)
        except AnalysisException:  # Spark's "cannot modify" for a static or a core setting
            # None when unset: Spark's default then, which Python cannot read, so the config's is reported.
            if spark.conf.get(key, None) != value:
                log.warning(
                    "%s=%s from the config is not applied: under spark-submit the driver can change only "
                    "runtime SQL settings; pass it to spark-submit (--conf %s=%s)", key, value, key, value,
                )
