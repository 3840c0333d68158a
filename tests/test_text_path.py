"""Match, count and balance on Spark: equal to the plain kernels and loops, the same on any partitioning."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import reasons as R
from pipeline.api import run_balance, run_count, run_ingest, run_match
from pipeline.balance import (
    balance_batch,
    keep_probabilities,
    threshold_for_tail_fraction,
    uniforms,
    with_balance_decisions,
)
from pipeline.cli import main
from pipeline.config import BalanceConfig, ConfigError, CountConfig, MatchConfig, PipelineConfig
from pipeline.count import ConceptIndex, count_concepts, count_entries
from pipeline.ledger import split_decisions
from pipeline.match import Matcher, reference_match, with_entry_ids, with_match_decisions

WORDS = ["dog", "cat", "red", "car", "new", "york", "new york", "T-shirt", "3", "5", "bird", "tree", "sun", "DOG"]
ENTRIES = WORDS + ["a,b", "never matches"]


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    pieces = WORDS + [",", ".", "!", "(dog)", "x", "  ", "\t", "\n", "Adult", "3.5"]
    out = []
    for _ in range(n):
        k = int(rng.integers(0, 8))
        out.append(" ".join(rng.choice(pieces, size=k)) if k else "")
    return out


def texts_frame(spark, texts: list[str], parts: int = 4):
    rows = [(f"u{i:05d}", t) for i, t in enumerate(texts)]
    return spark.createDataFrame(rows, "uid string, text string").repartition(parts)


def test_spark_entry_ids_equal_the_reference_loop(spark):
    texts = random_texts(2000)
    got = {r.uid: list(r.entry_ids) for r in with_entry_ids(texts_frame(spark, texts), ENTRIES).collect()}
    for i, t in enumerate(texts):
        assert got[f"u{i:05d}"] == reference_match(t, ENTRIES), t


def test_case_insensitive_mode_on_spark(spark):
    df = texts_frame(spark, ["DOG and Cat", "dog"], parts=1)
    got = sorted(list(r.entry_ids) for r in with_entry_ids(df, ENTRIES, mode="case_insensitive").collect())
    assert got == sorted([reference_match("DOG and Cat", ENTRIES, "case_insensitive"), reference_match("dog", ENTRIES, "case_insensitive")])
    assert ENTRIES.index("DOG") in got[0] and ENTRIES.index("dog") in got[0]


def test_match_stage_sends_unmatched_texts_to_the_ledger(spark):
    df = texts_frame(spark, ["a dog", "(dog)", "nothing here", "new york"], parts=2)
    kept, ledger = split_decisions(with_match_decisions(df, ENTRIES))
    assert sorted(r.text for r in kept.collect()) == ["a dog", "new york"]
    dropped = ledger.where("decision = 'dropped'").collect()
    assert {r.reason for r in dropped} == {R.NO_CONCEPT_MATCH} and len(dropped) == 2


def test_counts_equal_a_plain_count(spark):
    texts = random_texts(3000, seed=1)
    matched = with_entry_ids(texts_frame(spark, texts), ENTRIES)
    got = {r.entry_id: r["count"] for r in count_entries(matched, len(ENTRIES)).collect()}
    expected = Counter(i for t in texts for i in reference_match(t, ENTRIES))
    assert got == dict(expected)


def test_concepts_count_each_text_once_per_concept(spark):
    synonyms = {"canine": ["dog", "puppy"], "pet": ["dog", "cat"], "city": ["new york"], "none": ["zebra"]}
    entries = ["dog", "puppy", "cat", "new york", "zebra"]
    index = ConceptIndex(entries, synonyms)
    m = Matcher(entries)
    texts = ["dog and puppy", "a cat", "dog cat", "new york dog", "nothing"]
    offsets, values = m.match_batch(texts)
    # canine: texts 0, 2, 3; pet: 0, 1, 2, 3; city: 3; none: 0.
    assert index.concept_counts(offsets, values).tolist() == [3, 4, 1, 0]
    by_concept, by_synonym = count_concepts(texts_frame(spark, texts, 2), entries, synonyms, "metaclip", "ahocorasick_rs")
    assert {r.concept_id: r["count"] for r in by_concept.collect()} == {0: 3, 1: 4, 2: 1}
    assert {r.synonym_id: r["count"] for r in by_synonym.collect()} == {0: 3, 1: 1, 2: 2, 3: 1}


def test_uniforms_are_deterministic_and_uniform():
    from pipeline.balance import uid_hashes

    uids = [f"uid-{i}" for i in range(200_000)]
    h = uid_hashes(uids)
    ids = np.arange(len(uids)) % 7
    u = uniforms(42, h, ids)
    assert np.array_equal(u, uniforms(42, uid_hashes(uids), ids))
    assert not np.array_equal(u, uniforms(43, h, ids))
    assert u.min() >= 0.0 and u.max() < 1.0
    hist = np.histogram(u, bins=20, range=(0, 1))[0]
    expected = len(u) / 20
    assert ((hist - expected) ** 2 / expected).sum() < 60  # chi-square, 19 dof: p ~ 1e-6 at 60
    # The draw for one pair does not depend on what else is in the batch.
    assert uniforms(42, h[5:6], ids[5:6])[0] == u[5]


def test_keep_rule_matches_the_formula_and_statistics():
    rng = np.random.default_rng(0)
    n_entries, n_texts, t = 50, 200_000, 2000.0
    # Entry 0 is very frequent, others rarer; texts carry one to three entries.
    per = rng.integers(1, 4, size=n_texts)
    offsets = np.concatenate([[0], np.cumsum(per)])
    values = np.concatenate([np.sort(rng.choice(n_entries, size=k, replace=False, p=_zipf(n_entries))) for k in per]).astype(np.int32)
    counts = np.bincount(values, minlength=n_entries)
    p = keep_probabilities(counts, t)
    uids = [f"t{i}" for i in range(n_texts)]
    keep, prob = balance_batch(uids, offsets, values, p, seed=7)
    # keep probability is 1 - prod(1 - p_i) over the text's entries
    i = 12345
    ids = values[offsets[i] : offsets[i + 1]]
    assert prob[i] == pytest.approx(1 - np.prod(1 - p[ids]))
    # the kept total is within 5 standard deviations of its expectation
    mean, sd = prob.sum(), np.sqrt((prob * (1 - prob)).sum())
    assert abs(keep.sum() - mean) < 5 * sd
    # texts whose only entry is far above t: kept ~ Binomial(n, t / count)
    single = per == 1
    head = int(np.argmax(counts))
    only_head = single & (values[offsets[:-1]] == head)
    n, q = only_head.sum(), p[head]
    assert q < 0.5
    assert abs(keep[only_head].sum() - n * q) < 5 * np.sqrt(n * q * (1 - q))
    # entries at or below t are never limited: texts with one such entry are always kept
    tail = single & (p[values[offsets[:-1]]] == 1.0)
    assert keep[tail].all()


def _zipf(n: int) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1)
    return w / w.sum()


@pytest.mark.parametrize("fraction", [0.01, 0.06, 0.3, 0.5, 0.99, 1.0])
def test_tail_fraction_threshold_is_the_smallest_that_reaches_it(fraction):
    counts = np.random.default_rng(3).zipf(1.6, size=5000)
    t, share = threshold_for_tail_fraction(counts, fraction)
    total = counts.sum()
    assert share == pytest.approx(counts[counts < t].sum() / total)
    assert share >= fraction - 1e-12
    assert counts[counts < t - 1].sum() / total < fraction  # a smaller t does not reach it


def test_balance_and_match_are_the_same_on_any_partitioning(spark):
    texts = random_texts(3000, seed=5)
    counts = Counter(i for t in texts for i in reference_match(t, ENTRIES))
    p = keep_probabilities(np.array([counts.get(i, 0) for i in range(len(ENTRIES))]), 150.0)
    results = []
    for parts in (1, 3, 16):
        matched = with_match_decisions(texts_frame(spark, texts, parts), ENTRIES)
        kept, _ = split_decisions(matched)
        balanced, ledger = split_decisions(with_balance_decisions(kept, p, seed=11, t=150.0))
        results.append((sorted((r.uid, tuple(r.entry_ids)) for r in balanced.collect()), sorted(map(tuple, ledger.collect()))))
    assert results[0] == results[1] == results[2]
    assert 0 < len(results[0][0]) < 3000


def _pool(tmp_path, texts, files: int):
    folder = tmp_path / f"pool{files}"
    folder.mkdir()
    chunks = np.array_split(np.arange(len(texts)), files)
    for k, idx in enumerate(chunks):
        pq.write_table(
            pa.table({"url": [f"http://a/{i}.jpg" for i in idx], "text": [texts[i] for i in idx]}),
            folder / f"part-{k:03d}.parquet",
        )
    return folder


def test_text_path_runs_end_to_end_and_is_partition_invariant(spark, tmp_path):
    texts = [t for t in random_texts(1500, seed=9) if t.strip()]
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps(ENTRIES))
    syn = tmp_path / "synonyms.json"
    syn.write_text(json.dumps({"animal": ["dog", "cat", "bird"], "place": ["new york"]}))
    cfg = PipelineConfig(
        seed=3, match=MatchConfig(metadata=str(meta)), count=CountConfig(concepts=str(syn)), balance=BalanceConfig(tail_fraction=0.5)
    )
    outs = []
    for files in (1, 3, 16):
        run = str(tmp_path / f"run{files}")
        run_ingest(spark, str(_pool(tmp_path, texts, files)), run, cfg)
        run_match(spark, run, run, cfg)
        counted = run_count(spark, run, run, cfg)
        balanced = run_balance(spark, run, None, run, cfg)
        assert counted.stats["texts"] == balanced.stats["rows_in"]
        data = spark.read.parquet(f"{run}/balance/data").select("uid", "entry_ids").collect()
        counts = spark.read.parquet(f"{run}/count/data").orderBy("entry_id").collect()
        concepts = spark.read.parquet(f"{run}/count/concepts").orderBy("concept_id").collect()
        ledger = spark.read.parquet(f"{run}/decisions").collect()
        outs.append((sorted((r.uid, tuple(r.entry_ids)) for r in data), counts, concepts, sorted(map(tuple, ledger)), balanced.stats["t"]))
    assert outs[0] == outs[1] == outs[2]
    counts = {r.entry: r["count"] for r in outs[0][1]}
    assert set(counts) == set(ENTRIES) and counts["never matches"] == 0 and counts["a,b"] == 0
    expected = Counter(ENTRIES[i] for t in texts for i in reference_match(t, ENTRIES))
    assert {e: c for e, c in counts.items() if c} == dict(expected)
    animal = outs[0][2][0]
    assert animal.concept == "animal"
    assert animal["count"] == sum(1 for t in texts if set(reference_match(t, ["dog", "cat", "bird"])))
    stats = json.loads((tmp_path / "run1" / "balance" / "stats.json").read_text())
    assert stats["expected_kept"] > 0 and stats["t_from"] == "tail_fraction=0.5"
    assert stats["tail_share"] >= 0.5


def test_cli_text_path_and_its_errors(spark, tmp_path, capsys):
    pool = _pool(tmp_path, ["a dog", "a cat", "red car", "nothing"], 1)
    meta = tmp_path / "m.txt"
    meta.write_text("dog\ncat\ncar\n")
    run = str(tmp_path / "run")
    assert main(["ingest", "--input", str(pool), "--output", run]) == 0
    assert main(["match", "--input", run, "--output", run]) == 2
    assert "no metadata given" in capsys.readouterr().err
    assert main(["match", "--input", run, "--metadata", str(meta), "--output", run]) == 0
    assert main(["count", "--input", run, "--output", run]) == 0
    assert main(["balance", "--input", run, "--output", run]) == 2
    assert "exactly one of --t N or --tail-fraction F" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["balance", "--input", run, "--output", run, "--t", "1", "--seed", "4"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows_in"] == 3 and stats["t"] == 1.0
    assert main(["count", "--input", str(tmp_path / "nope"), "--output", run]) == 2


def test_balance_config_rejects_both_thresholds():
    with pytest.raises(ConfigError, match="either t or tail_fraction"):
        PipelineConfig(balance=BalanceConfig(t=5, tail_fraction=0.1)).validate()


def test_accounting_holds_after_the_text_path_and_catches_a_lost_row(spark, tmp_path):
    from pipeline.ledger import check_accounting

    pool = _pool(tmp_path, ["a dog", "a cat", "", "nothing", "dog cat", "a dog"], 1)
    meta = tmp_path / "m.json"
    meta.write_text(json.dumps(["dog", "cat"]))
    run = str(tmp_path / "run")
    cfg = PipelineConfig(match=MatchConfig(metadata=str(meta)), balance=BalanceConfig(t=1))
    run_ingest(spark, str(pool), run, cfg)
    run_match(spark, run, run, cfg)
    run_count(spark, run, run, cfg)
    run_balance(spark, run, None, run, cfg)
    summary = check_accounting(spark, run, ["ingest", "match", "balance"])
    assert summary["inputs"] == 6
    assert summary["dropped"]["ingest/empty_text"] == 1 and summary["dropped"]["match/no_concept_match"] == 1
    # A stats.json that disagrees with its ledger: the check must notice.
    stats_path = tmp_path / "run" / "match" / "stats.json"
    honest = stats_path.read_text()
    (stats_path.parent / ".stats.json.crc").unlink(missing_ok=True)  # Hadoop's checksum of the old bytes
    stats_path.write_text(json.dumps({**json.loads(honest), "kept": json.loads(honest)["kept"] + 1}))
    with pytest.raises(AssertionError, match="match/stats.json says"):
        check_accounting(spark, run, ["ingest", "match", "balance"])
    stats_path.write_text(honest)
    # A uid match dropped that comes back in balance's ledger: noticed.
    ledger = tmp_path / "run" / "decisions" / "stage=balance"
    rows = pq.read_table(ledger)
    dropped = pq.read_table(tmp_path / "run" / "decisions" / "stage=match", filters=[("decision", "=", "dropped")])
    revived = pa.concat_tables([rows, dropped.slice(0, 1).select(rows.column_names).cast(rows.schema)])
    for f in ledger.glob("*.parquet"):
        f.unlink()
    pq.write_table(revived, ledger / "part-0.parquet")
    with pytest.raises(AssertionError, match="balance decided 1 uids that match did not keep and missed 0"):
        check_accounting(spark, run, ["ingest", "match", "balance"])
    (ledger / "part-0.parquet").unlink()
    pq.write_table(rows, ledger / "part-0.parquet")
    # Remove one kept row from the final output: the check must notice.
    data = tmp_path / "run" / "balance" / "data"
    table = pq.read_table(data)
    if table.num_rows:
        for f in data.glob("*.parquet"):
            f.unlink()
        pq.write_table(table.slice(1), data / "part-0.parquet")
        with pytest.raises(AssertionError, match="differ"):
            check_accounting(spark, run, ["ingest", "match", "balance"])


def test_match_with_nothing_kept_writes_an_empty_output_with_its_columns(spark, tmp_path):
    pool = _pool(tmp_path, ["a dog", "a cat"], 1)
    meta = tmp_path / "m.json"
    meta.write_text(json.dumps(["zebra"]))
    run = str(tmp_path / "run")
    cfg = PipelineConfig(match=MatchConfig(metadata=str(meta)))
    run_ingest(spark, str(pool), run, cfg)
    result = run_match(spark, run, run, cfg)
    assert result.stats["kept"] == 0 and result.stats["dropped"] == {R.NO_CONCEPT_MATCH: 2}
    data = spark.read.parquet(f"{run}/match/data")
    assert data.count() == 0 and data.columns[:3] == ["uid", "text", "entry_ids"]
    ledger = spark.read.parquet(f"{run}/decisions/stage=match").collect()
    assert {r.detail for r in ledger} == {"no entry of 1 matched (metaclip)"}


def test_balance_stats_expect_the_sum_of_keep_probabilities(spark, tmp_path):
    texts = [f"dog {'cat' if i % 3 == 0 else 'bird'}" for i in range(400)]
    pool = _pool(tmp_path, texts, 2)
    meta = tmp_path / "m.json"
    meta.write_text(json.dumps(["dog", "cat", "bird"]))
    run = str(tmp_path / "run")
    cfg = PipelineConfig(seed=1, match=MatchConfig(metadata=str(meta)), balance=BalanceConfig(t=50))
    run_ingest(spark, str(pool), run, cfg)
    run_match(spark, run, run, cfg)
    run_count(spark, run, run, cfg)
    stats = run_balance(spark, run, None, run, cfg).stats
    # dog: 400 texts, cat: 134, bird: 266 -> p = 1/8, 50/134, 50/266
    p = {"dog": 50 / 400, "cat": 50 / 134, "bird": 50 / 266}
    expected = 134 * (1 - (1 - p["dog"]) * (1 - p["cat"])) + 266 * (1 - (1 - p["dog"]) * (1 - p["bird"]))
    assert stats["expected_kept"] == pytest.approx(expected, rel=1e-6)
    assert abs(stats["kept"] - expected) < 5 * np.sqrt(expected)
    kept = spark.read.parquet(f"{run}/balance/data")
    assert kept.count() == stats["kept"] and "keep_prob" in kept.columns and "_reason" not in kept.columns
    detail = spark.read.parquet(f"{run}/decisions/stage=balance").where("decision = 'dropped'").first().detail
    assert detail.startswith("p_keep=0.") and detail.endswith("at t=50")
