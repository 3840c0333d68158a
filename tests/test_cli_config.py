"""The `curate` command line, the YAML config, spark-submit, and the embedding dependencies."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.core.config import ConfigError
from pipeline.registry import PipelineConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def write_yaml(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_values_from_yaml(tmp_path):
    cfg = load_config(write_yaml(tmp_path, "seed: 7\ningest:\n  max_text_chars: 100\n  format: tsv\n"))
    assert cfg.seed == 7 and cfg.ingest.max_text_chars == 100 and cfg.ingest.format == "tsv"
    assert cfg.spark == PipelineConfig().spark
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, message",
    [
        ("ingest:\n  text_colum: caption\n", r"config\.ingest\.text_colum: unknown key; known keys: .*text_col"),
        ("bogus: 1\n", r"config\.bogus: unknown key"),
        ("ingest:\n  max_text_chars: lots\n", r"config\.ingest\.max_text_chars: expected int, got str"),
        ("ingest:\n  max_text_chars: 0\n", r"config\.ingest\.max_text_chars: must be >= 1"),
        ("ingest:\n  format: xml\n", r"config\.ingest\.format: 'xml' is not one of"),
        ("spark:\n  conf:\n    shuffle: 3\n", r"config\.spark\.conf\.shuffle"),
        ("- a\n- b\n", r"top level must be a mapping"),
        ("ingest: [unclosed\n", r"not valid YAML"),
        ("seed: true\n", r"config\.seed: expected int, got bool"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_yaml(tmp_path, text))


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/pipeline.yaml")


def test_demo_config_in_repo_is_valid():
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert cfg.demo.rows > 0


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "ingest" in out and "demo" in out


def test_cli_ingest_writes_run_json_and_errors_are_one_line(spark, tmp_path, capsys):
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"URL": ["http://a/1"], "TEXT": ["one"]}), pool)
    run = tmp_path / "run"
    assert main(["ingest", "--input", str(pool), "--output", str(run), "--seed", "5"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["kept"] == 1
    record = json.loads((run / "run.json").read_text())
    assert record["seed"] == 5 and record["config"]["ingest"]["format"] == "auto"
    assert record["versions"]["pyspark"] and record["config_hash"]

    assert main(["ingest", "--input", str(tmp_path / "missing"), "--output", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("curate ingest: error: input not found")

    assert main(["ingest", "--input", str(pool), "--output", str(run), "--text-col", "nope"]) == 2
    assert "text column 'nope' not found; columns present: URL, TEXT" in capsys.readouterr().err


def test_a_run_folder_inside_the_input_is_one_line(spark, tmp_path, capsys):
    """A run folder in the pool would make ingest read its own run.json as pool rows: refused in one
    line (ingest, `curate run`), before anything is written. A later stage may take the run folder
    itself as input, but not a folder inside its input."""
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "a.jsonl").write_text('{"url": "http://a/1.jpg", "text": "a dog"}\n')
    data = tmp_path / "elsewhere" / "ingest" / "data"
    cases = [
        (["ingest", "--input", str(pool), "--output", str(pool / "run")],
         f"curate ingest: error: --output {pool}/run is inside the input {pool}: choose a run folder outside the pool"),
        (["ingest", "--input", f"{pool}/", "--output", str(pool)],
         f"curate ingest: error: --output {pool} is the input {pool}/: choose a run folder outside the pool"),
        (["run", "--input", str(pool), "--output", str(pool / "r" / "un"), "--stages", "ingest,match"],
         f"curate run: error: run.output {pool}/r/un is inside run.input {pool}: choose a run folder outside the pool"),
        (["match", "--input", str(data), "--output", str(data / "x"), "--metadata", str(pool / "a.jsonl")],
         f"curate match: error: --output {data}/x is inside the input {data}: choose a run folder outside it"),
    ]
    for args, line in cases:
        assert main(args) == 2, args
        assert capsys.readouterr().err.strip().splitlines() == [line]
    from pipeline.api import run_pipeline
    from pipeline.core.errors import UserError

    cfg = load_config(None, {"run.input": str(pool), "run.output": f"file://{pool}/run", "run.stages": ["ingest"]})
    with pytest.raises(UserError, match=r"run\.output file://.*/pool/run is inside run\.input"):
        run_pipeline(spark, cfg)  # the Python API too
    assert [p.name for p in pool.iterdir()] == ["a.jsonl"] and not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(
    "output, source, pool, inside",
    [
        ("RUN", "RUN", False, False),  # a later stage reading the run's own upstream output
        ("RUN", "RUN/match", False, False),
        ("RUN", "RUN", True, True),
        ("pool-b", "pool", True, False),  # a sibling whose name starts with the pool's
        ("pool/../run", "pool", True, False),
        ("link/run", "pool", True, True),  # link -> pool
        ("file:TMP/pool/run", "pool", True, True),
        ("s3a://bucket/a/bc", "s3a://bucket/a/b", True, False),
        ("s3a://bucket/a/b/run", "s3a://bucket/a/b/", True, True),
        ("s3a://bucket/a/b", "s3a://bucket/a/b", False, False),
        ("hdfs:///runs/x/y", "hdfs:///runs/x", False, True),
    ],
)
def test_which_run_folders_are_inside_the_input(tmp_path, monkeypatch, output, source, pool, inside):
    from pipeline.core.errors import UserError
    from pipeline.core.folder import check_outside

    (tmp_path / "pool").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "pool")
    monkeypatch.chdir(tmp_path)
    output = output.replace("TMP", str(tmp_path))
    if inside:
        with pytest.raises(UserError, match="choose a run folder outside"):
            check_outside(output, source, pool=pool)
    else:
        check_outside(output, source, pool=pool)


@pytest.mark.slow
def test_spark_submit_settings_win(tmp_path):
    """Under spark-submit its master and --conf settings win; the config's other stated settings
    apply where the driver can set them (runtime SQL settings) and are one warning line where it
    cannot (driver memory, stated here equal to its default: stated still counts)."""
    pool = tmp_path / "pool.tsv"
    pool.write_text("a caption\thttp://a/1.jpg\nanother one\thttp://a/2.jpg\n")
    run = tmp_path / "run"
    config = write_yaml(
        tmp_path,
        "spark:\n  master: local[2]\n  shuffle_partitions: 5\n  driver_memory: 4g\n"
        "  conf:\n    spark.sql.files.maxRecordsPerFile: '1234'\n",
    )
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    proc = subprocess.run(
        [
            str(BIN / "spark-submit"), "--master", "local[1]", "--conf", "spark.sql.shuffle.partitions=3",
            "--conf", "spark.ui.enabled=false",
            str(ROOT / "jobs" / "ingest.py"), "--input", str(pool), "--output", str(run), "--config", str(config),
        ],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run / "run.json").read_text())
    assert record["spark_master"] == "local[1]"
    assert record["spark_conf"]["spark.sql.shuffle.partitions"] == "3"
    assert record["spark_conf"]["spark.sql.files.maxRecordsPerFile"] == "1234"
    assert json.loads((run / "ingest" / "stats.json").read_text())["kept"] == 2
    # spark-submit passes the Python driver's stderr on to its own stdout.
    warnings = [line.split(" pipeline.core.spark: ", 1)[1] for line in proc.stdout.splitlines() if " WARNING pipeline.core.spark: " in line]
    assert warnings == [
        "spark.driver.memory=4g from the config is not applied: under spark-submit the driver can change only "
        "runtime SQL settings; pass it to spark-submit (--conf spark.driver.memory=4g)"
    ]


def test_open_clip_imports_and_runs_a_tiny_model():
    """torch and torchvision are a matching pair: open_clip imports and a tiny random model runs."""
    import open_clip
    import torch

    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    model = open_clip.CLIP(**cfg).eval()
    with torch.no_grad():
        img = model.encode_image(torch.rand(2, 3, 32, 32), normalize=True)
        txt = model.encode_text(torch.randint(0, 49408, (2, 16)), normalize=True)
    assert img.shape == (2, 32) and txt.shape == (2, 32)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
