"""Every stage's written output matches its contract in schemas/ (names, types; extras only where allowed)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from pipeline.api import run_balance, run_count, run_ingest, run_match
from pipeline.config import BalanceConfig, CountConfig, MatchConfig, PipelineConfig
from pipeline.contracts import spark_type

OUTPUTS = {
    "ingest": "ingest/data",
    "decisions": "decisions",
    "match": "match/data",
    "count": "count/data",
    "concept_counts": "count/concepts",
    "balance": "balance/data",
}


@pytest.fixture(scope="module")
def run_dir(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contracts")
    texts = ["a dog", "a cat and a dog", "", "nothing", "new york at night", "a dog"]
    pq.write_table(
        pa.table({"url": [f"http://a/{i}" for i in range(6)], "text": texts, "width": [10, 20, 30, 40, 50, 60]}),
        tmp / "pool.parquet",
    )
    (tmp / "m.json").write_text(json.dumps(["dog", "cat", "new york"]))
    (tmp / "c.json").write_text(json.dumps({"pet": ["dog", "cat"], "city": ["new york"]}))
    cfg = PipelineConfig(
        match=MatchConfig(metadata=str(tmp / "m.json")), count=CountConfig(concepts=str(tmp / "c.json")), balance=BalanceConfig(t=1)
    )
    run = str(tmp / "run")
    run_ingest(spark, str(tmp / "pool.parquet"), run, cfg)
    run_match(spark, run, run, cfg)
    run_count(spark, run, run, cfg)
    run_balance(spark, run, None, run, cfg)
    return run


def test_every_contract_has_a_test():
    assert set(schemas.names()) == set(OUTPUTS)


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_output_matches_contract(spark, run_dir, name):
    contract = schemas.load(name)
    df = spark.read.parquet(f"{run_dir}/{OUTPUTS[name]}")
    fields = {f.name: f for f in df.schema.fields}
    for col in contract["columns"]:
        assert col["name"] in fields, f"{name}: missing {col['name']}"
        got = fields[col["name"]].dataType
        want = spark_type(col["type"])
        assert got.simpleString() == want.simpleString(), f"{name}.{col['name']}: {got} != {want}"
        if not col["nullable"]:
            assert df.where(df[col["name"]].isNull()).count() == 0, f"{name}.{col['name']} has nulls"
    # the contract's columns come first, in order
    assert df.columns[: len(contract["columns"])] == [c["name"] for c in contract["columns"]]
    extras = set(df.columns) - {c["name"] for c in contract["columns"]} - {p["name"] for p in contract.get("partition_columns", [])}
    if contract["extra_columns"] == "none":
        assert not extras, f"{name}: unexpected columns {extras}"
