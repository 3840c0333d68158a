"""Helpers for the tests that run the whole text path in another process: a pool, a config, a snapshot."""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import pyarrow.dataset as ds

ROOT = Path(__file__).resolve().parents[1]


def write_text_setup(tmp: Path, rows: int, seed: int = 0, extra_yaml: str = "") -> tuple[Path, str]:
    """A demo pool of `rows` pairs, a small metadata list and a YAML config for the text path.

    Returns (config path, pool path); the config names no run folder (pass --output).
    """
    import dataclasses

    from pipeline.core.config import DemoConfig
    from pipeline.demo import ADJECTIVES, NOUNS, generate_pool, write_concepts

    pool = generate_pool(str(tmp / "pool"), dataclasses.replace(DemoConfig(), rows=rows, image_size=16), seed=seed)
    metadata = tmp / "metadata.json"
    entries = dict.fromkeys([str(i) for i in range(100)] + NOUNS + ADJECTIVES + ["stock photo"])
    metadata.write_text(json.dumps(list(entries)))
    concepts = write_concepts(str(tmp / "concepts.json"))
    config = tmp / "pipeline.yaml"
    config.write_text(
        f"""seed: 3
spark:
  shuffle_partitions: 4
run:
  input: {pool.path}
  stages: [ingest, match, count, balance, report]
match:
  metadata: {metadata}
count:
  concepts: {concepts}
balance:
  t: 5
{extra_yaml}"""
    )
    return config, pool.path


def snapshot(run_root: str | Path) -> dict:
    """What a run decided, read with pyarrow (not Spark): rows, ledger, counts and stats of the
    text-path stages present in it."""
    run_root = Path(run_root)

    def rows(rel: str, columns: list[str]) -> list[tuple]:
        table = ds.dataset(run_root / rel, format="parquet", partitioning="hive").to_table(columns=columns)
        return sorted(tuple(tuple(v) if isinstance(v, list) else v for v in r.values()) for r in table.to_pylist())

    tables = {
        "kept": ("balance/data", ["uid", "text", "entry_ids", "keep_prob"]),
        "matched": ("match/data", ["uid", "entry_ids"]),
        "ledger": ("decisions", ["stage", "uid", "decision", "reason", "detail"]),
        "counts": ("count/data", ["entry_id", "entry", "count"]),
        "concepts": ("count/concepts", ["concept", "count"]),
    }
    out: dict = {key: rows(rel, cols) for key, (rel, cols) in tables.items() if (run_root / rel).exists()}
    out["stats"] = {}
    for stage in ("ingest", "match", "count", "balance"):
        if (run_root / stage / "stats.json").exists():
            s = json.loads((run_root / stage / "stats.json").read_text())
            out["stats"][stage] = {k: v for k, v in s.items() if k not in ("seconds", "finished", "input", "counts")}
    return out


def complete_stages(run_root: str | Path) -> list[str]:
    """Stages with a completion marker."""
    return sorted(p.parent.name for p in Path(run_root).glob("*/_COMPLETE"))


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a `curate`/spark-submit child: this interpreter for Spark's Python workers."""
    env = dict(os.environ)
    env.pop("PYSPARK_GATEWAY_PORT", None)
    env.update({"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"})
    env.update(extra)
    return env


def package_zip(path: Path) -> Path:
    """The project's code as spark-submit --py-files takes it: `pipeline` and `schemas` in one zip."""
    with zipfile.ZipFile(path, "w") as z:
        for package in ("pipeline", "schemas"):
            for f in sorted((ROOT / package).rglob("*")):
                if f.is_file() and "__pycache__" not in f.parts:
                    z.write(f, f.relative_to(ROOT))
    return path


def tar_samples(shards_dir) -> list[tuple[str, str, dict[str, bytes]]]:
    """(tar file name, sample key, {extension: bytes}) for every sample of a folder of WebDataset
    tars, read with tarfile, in file and member order."""
    import glob
    import tarfile

    out = []
    for path in sorted(glob.glob(f"{shards_dir}/*.tar")):
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(path) as tf:
            for m in tf.getmembers():
                stem, ext = m.name.rsplit(".", 1)
                members.setdefault(stem, {})[ext] = tf.extractfile(m).read()
        out += [(Path(path).name, key, files) for key, files in members.items()]
    return out

