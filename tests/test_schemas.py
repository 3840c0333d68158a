"""Every stage's written output matches its contract in schemas/ (names, types; extras only where allowed)."""

from __future__ import annotations

import pytest

import schemas
from pipeline.core.contracts import spark_type
from tests.conftest import build_text_run

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
    columns = {"url": [f"http://a/{i}" for i in range(6)], "text": texts, "width": [10, 20, 30, 40, 50, 60]}
    concepts = {"pet": ["dog", "cat"], "city": ["new york"]}
    return build_text_run(spark, tmp, columns, ["dog", "cat", "new york"], concepts, t=1)


# Contracts checked against written outputs in their stage's own tests (with assert_matches_contract).
CHECKED_ELSEWHERE = {
    "cluster": "tests/test_cluster.py",
    "prune": "tests/test_prune.py",
    "prune_similarity": "tests/test_prune.py",
    "cluster_stats": "tests/test_prune.py",
    "download": "tests/test_download.py",
    "embed": "tests/test_embed.py",
}


def test_every_contract_has_a_test():
    assert set(schemas.names()) == set(OUTPUTS) | set(CHECKED_ELSEWHERE)


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_output_matches_contract(spark, run_dir, name):
    assert_matches_contract(spark.read.parquet(f"{run_dir}/{OUTPUTS[name]}"), name)


def assert_matches_contract(df, name: str) -> None:
    """Names, types, nulls, order of the contract's columns; extras only where it allows them."""
    contract = schemas.load(name)
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
