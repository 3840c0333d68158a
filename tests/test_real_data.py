"""Ingest reads every real caption-carrying file in ../shared/anchors/data; its ledger adds up."""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from pipeline.core.ledger import split_decisions
from pipeline.stages.ingest import IngestConfig, with_ingest_decisions
from pipeline.stages.sources import read_pool
from tests.conftest import anchor

FONDANT = "fondant/playground/some-cool-pipeline/data/cool-pipeline/cool-pipeline-20231110150133"

# (path under anchors/data, ingest options, input rows, rows expected to be kept at least)
REAL_FILES = [
    ("img2dataset/tests/test_files/test_10000.parquet", {}, 10_000, 9_900),
    ("img2dataset/tests/test_files/test_1000.parquet", {}, 1_000, 990),
    ("M2IB/Validation_GCC-1.1.0-Validation.tsv", {}, 15_833, 15_800),
    ("Bangla_Image_Captioning/captions_val2017.json", {}, 25_014, 25_000),
    ("image_caption_generator/Flickr8k.token.txt", {}, 40_460, 40_000),
    (f"{FONDANT}/load_from_hub/images/part.0.parquet", {}, 1_000, 500),
    (
        "fondant/examples/pipelines/commoncrawl/components/image_url_deduplication/tests/test_data/part.0.parquet",
        {},
        100,
        10,
    ),
    # MMC4: one pair per image of a document; 107 documents with 417 images.
    ("mmc4/docs_no_face_shard_151_v3.partial.jsonl", {}, 417, 400),
]


@pytest.mark.shared
@pytest.mark.parametrize("rel, opts, n_input, min_kept", REAL_FILES, ids=[r[0].split("/")[-1] for r in REAL_FILES])
def test_real_file_ingests_with_ledger_adding_up(spark, rel, opts, n_input, min_kept):
    path = anchor(rel)
    cfg = IngestConfig(**opts)
    raw = read_pool(spark, str(path), cfg)
    kept, ledger = split_decisions(with_ingest_decisions(raw.df, cfg, raw.uid_given, raw.extras))
    ledger = ledger.cache()
    n_ledger = ledger.count()
    n_kept = kept.count()
    by_reason = {r["reason"]: r["count"] for r in ledger.where("decision = 'dropped'").groupBy("reason").count().collect()}
    print(f"{rel}: {n_ledger} rows, {n_kept} kept, dropped {by_reason}")
    assert n_ledger == n_input
    assert ledger.select("uid").distinct().count() == n_input
    assert n_kept + sum(by_reason.values()) == n_input
    assert n_kept >= min_kept
    ledger.unpersist()


@pytest.mark.shared
def test_laion_duplicate_url_and_mojibake_captions_are_kept(spark):
    # test_10000.parquet has one duplicate URL; uids hash url + text, so only exact pairs collide.
    path = anchor("img2dataset/tests/test_files/test_10000.parquet")
    raw = read_pool(spark, str(path), IngestConfig())
    assert raw.fmt == "parquet" and raw.uid_given is None
    df = raw.df
    assert df.select("url").distinct().count() == 9_999
    kept, _ = split_decisions(with_ingest_decisions(df, IngestConfig(), None, raw.extras))
    assert kept.where("url is null").count() == 0
    # Six captions are valid UTF-8 holding U+FFFD ("The Oklahoman\ufffds Little All-City",
    # "M\ufffdscara Monster High"): mojibake from an earlier decode, still captions.
    assert kept.where(F.instr("text", "\ufffd") > 0).count() == 6


@pytest.mark.shared
def test_coco_keeps_size_and_licence(spark):
    path = anchor("Bangla_Image_Captioning/captions_val2017.json")
    raw = read_pool(spark, str(path), IngestConfig())
    kept, _ = split_decisions(with_ingest_decisions(raw.df, IngestConfig(), None, raw.extras))
    row = kept.where("source_key = '38'").collect()[0]
    assert row.text == "A black Honda motorcycle parked in front of a garage."
    assert row.url.startswith("http://images.cocodataset.org/")
    assert row.width > 0 and row.height > 0 and row.license is not None
