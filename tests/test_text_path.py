"""Match, count and balance on Spark: equal to the plain kernels and loops, the same on any partitioning."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.api import run_balance, run_count, run_ingest, run_match
from pipeline.cli import main
from pipeline.core import reasons as R
from pipeline.core.config import ConfigError
from pipeline.core.ledger import split_decisions
from pipeline.kernels.sampling import (
    balance_batch,
    keep_probabilities,
    threshold_for_tail_fraction,
    uid_hashes,
    uniforms,
)
from pipeline.registry import PipelineConfig
from pipeline.stages.balance import BalanceConfig, with_balance_decisions
from pipeline.stages.count import (
    ConceptIndex,
    CountConfig,
    count_concepts,
    count_entries,
    entry_counts,
)
from pipeline.stages.match import MatchConfig, with_entry_ids, with_match_decisions
from tests.references import metaclip_match

WORDS = ["dog", "cat", "red", "car", "new", "york", "new york", "T-shirt", "3", "5", "bird", "tree", "sun", "DOG"]
ENTRIES = WORDS + ["a,b", "never matches"]

# MetaCLIP balancing as MISSION.md (stage 5) and pipeline/stages/balance.py's docstrings define it, with
# the constants written out: u = splitmix64(splitmix64(uid_hash ^ splitmix64(seed)) ^ entry * golden)
# >> 11 / 2^53, uid_hash = the first 8 bytes of BLAKE2b(uid, UTF-8) read little-endian.
MASK64 = 0xFFFFFFFFFFFFFFFF
GOLDEN = 0x9E3779B97F4A7C15


def ref_splitmix64(x: int) -> int:
    z = (x + GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def ref_uid_hash(uid: str) -> int:
    return int.from_bytes(hashlib.blake2b(uid.encode("utf-8"), digest_size=8).digest(), "little")


def ref_uniform(seed: int, uid: str, entry: int) -> float:
    a = ref_splitmix64(seed & MASK64)
    b = ref_splitmix64(ref_uid_hash(uid) ^ a)
    c = ref_splitmix64(b ^ ((entry * GOLDEN) & MASK64))
    return (c >> 11) / 2**53


def ref_p(count: int, t: float) -> float:
    """p_i = min(1, t / count_i)."""
    return min(1.0, t / count)


def ref_keep(seed: int, uid: str, entries: Sequence[int], p: Sequence[float]) -> bool:
    """A text is kept when some matched entry draws u < p_i (so with probability 1 - prod(1 - p_i))."""
    return any(ref_uniform(seed, uid, e) < p[e] for e in entries)


def ref_tail_threshold(counts: Sequence[int], fraction: float) -> int:
    """The smallest t whose tail (entries with count < t) holds at least `fraction` of all matches."""
    total = sum(counts)
    t = 1
    while sum(c for c in counts if c < t) < fraction * total:
        t += 1
    return t


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
        assert got[f"u{i:05d}"] == metaclip_match(t, ENTRIES), t


def test_case_insensitive_mode_on_spark(spark):
    df = texts_frame(spark, ["DOG and Cat", "dog"], parts=1)
    got = {r.text: list(r.entry_ids) for r in with_entry_ids(df, ENTRIES, mode="case_insensitive").collect()}
    # dog = 0, cat = 1, DOG = 13: with both sides lowercased, the entries "dog" and "DOG" both match.
    assert got == {"DOG and Cat": [0, 1, 13], "dog": [0, 13]}


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
    expected = Counter(i for t in texts for i in metaclip_match(t, ENTRIES))
    assert got == dict(expected)


def test_an_entry_counts_once_per_text_however_often_it_occurs(spark):
    texts = ["dog dog", "new york york", "dog, dog! dog.", "york", "(dog) cat"]
    matched = with_entry_ids(texts_frame(spark, texts, parts=2), ENTRIES)
    got = {ENTRIES[r.entry_id]: r["count"] for r in count_entries(matched, len(ENTRIES)).collect()}
    assert got == {"dog": 2, "new": 1, "york": 2, "new york": 1, "cat": 1}


def test_entry_counts_are_texts_per_entry():
    # Texts: [dog, cat], [dog], [], [york, new york]; ids unique within a text, as match writes them.
    offsets, values = np.array([0, 2, 3, 3, 5]), np.array([0, 1, 0, 5, 6])
    assert entry_counts(offsets, values, 8).tolist() == [2, 1, 0, 0, 0, 1, 1, 0]


def test_concepts_count_each_text_once_per_concept(spark):
    synonyms = {"canine": ["dog", "puppy"], "pet": ["dog", "cat"], "city": ["new york"], "none": ["zebra"]}
    entries = ["dog", "puppy", "cat", "new york", "zebra"]
    index = ConceptIndex(entries, synonyms)
    texts = ["dog and puppy", "a cat", "dog cat", "new york dog", "nothing"]
    # Their entry ids, written out: [dog, puppy], [cat], [dog, cat], [dog, new york], [].
    offsets, values = np.array([0, 2, 3, 5, 7, 7]), np.array([0, 1, 2, 0, 2, 0, 3])
    # canine: texts 0, 2, 3; pet: 0, 1, 2, 3; city: 3; none: 0.
    assert index.concept_counts(offsets, values).tolist() == [3, 4, 1, 0]
    by_concept, by_synonym = count_concepts(texts_frame(spark, texts, 2), entries, synonyms, "metaclip", "ahocorasick_rs")
    assert {r.concept_id: r["count"] for r in by_concept.collect()} == {0: 3, 1: 4, 2: 1}
    assert {r.synonym_id: r["count"] for r in by_synonym.collect()} == {0: 3, 1: 1, 2: 2, 3: 1}


def test_reference_splitmix64_gives_the_published_sequence():
    # SplitMix64 seeded with 0: its first two outputs (Steele, Lea and Flood 2014; Vigna's splitmix64.c).
    assert ref_splitmix64(0) == 0xE220A8397B1DCDAF
    assert ref_splitmix64(GOLDEN) == 0x6E789E6AA1B965F4


def test_uid_hash_and_uniforms_are_the_documented_hash():
    uids = ["", "a", "uid-7", "caf\u00e9", "\u732b", "0" * 300]
    assert uid_hashes(uids).tolist() == [ref_uid_hash(u) for u in uids]
    h = np.array([ref_uid_hash(u) for u in uids], np.uint64)
    for seed in (0, 1, 42, 2**63 + 5, -1):
        for entry in (0, 1, 13, 499_999):
            got = uniforms(seed, h, np.full(len(uids), entry)).tolist()
            assert got == [ref_uniform(seed, u, entry) for u in uids], (seed, entry)


def test_uniforms_are_deterministic_and_uniform():
    uids = [f"uid-{i}" for i in range(200_000)]
    h = np.array([ref_uid_hash(u) for u in uids], np.uint64)
    ids = np.arange(len(uids)) % 7
    u = uniforms(42, h, ids)
    assert np.array_equal(u, uniforms(42, h.copy(), ids))
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
    assert counts.min() > 0
    p = np.array([ref_p(int(c), t) for c in counts])
    uids = [f"t{i}" for i in range(n_texts)]
    keep, prob = balance_batch(uids, offsets, values, p, seed=7)
    # keep probability is 1 - prod(1 - p_i) over the text's entries
    i = 12345
    ids = values[offsets[i] : offsets[i + 1]]
    assert prob[i] == pytest.approx(1 - np.prod(1 - p[ids]))
    # each decision is the documented draw: kept when some entry draws u < p_i
    for i in range(0, n_texts, 67):
        assert keep[i] == ref_keep(7, uids[i], values[offsets[i] : offsets[i + 1]].tolist(), p), i
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


def test_keep_probabilities_by_hand():
    # t = 2: counts 1 and 2 are not limited, 4 halves, 8 quarters; an entry never seen limits nothing.
    assert keep_probabilities(np.array([0, 1, 2, 4, 8]), 2.0).tolist() == [1.0, 1.0, 1.0, 0.5, 0.25]


def test_a_decision_depends_on_the_uid_not_on_the_batch():
    """The same (seed, uid, entries) gets the same decision alone, reordered or in another batch."""
    uids = [f"x{i}" for i in range(300)]
    per = np.array([1 + i % 3 for i in range(300)])
    offsets = np.concatenate([[0], np.cumsum(per)])
    values = np.concatenate([np.arange(k) * 2 + (i % 2) for i, k in enumerate(per)]).astype(np.int32)
    p = np.array([0.3, 0.2, 0.5, 0.1, 0.4, 0.25])
    keep, _ = balance_batch(uids, offsets, values, p, seed=9)
    assert 0 < keep.sum() < len(uids)
    assert keep.tolist() == [ref_keep(9, u, values[offsets[i] : offsets[i + 1]].tolist(), p) for i, u in enumerate(uids)]
    order = np.random.default_rng(1).permutation(len(uids))[:120]
    sub_per = per[order]
    sub_values = np.concatenate([values[offsets[i] : offsets[i + 1]] for i in order])
    sub_keep, _ = balance_batch([uids[i] for i in order], np.concatenate([[0], np.cumsum(sub_per)]), sub_values, p, seed=9)
    assert sub_keep.tolist() == keep[order].tolist()


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


@pytest.mark.parametrize(
    "counts, fraction, t, share",
    [
        ([1, 2, 3, 4], 0.1, 2, 0.1),  # tail {1}: 1 of 10 matches, exactly enough
        ([4, 3, 2, 1], 0.15, 3, 0.3),  # {1} holds 0.1, not enough; {1, 2} holds 0.3
        ([1, 2, 3, 4], 0.3, 3, 0.3),
        ([1, 2, 3, 4], 0.31, 4, 0.6),
        ([1, 2, 3, 4], 1.0, 5, 1.0),  # every entry in the tail: t is one above the largest count
        ([0, 5, 0, 5, 10], 0.5, 6, 0.5),  # unseen entries hold no matches
        ([3, 3, 3], 0.2, 4, 1.0),  # ties enter the tail together
        ([100], 0.5, 101, 1.0),
    ],
)
def test_tail_fraction_threshold_by_hand(counts, fraction, t, share):
    assert ref_tail_threshold(counts, fraction) == t
    assert threshold_for_tail_fraction(np.array(counts), fraction) == (t, pytest.approx(share))


def test_tail_fraction_threshold_needs_a_match():
    with pytest.raises(ValueError, match="no entry has a non-zero count"):
        threshold_for_tail_fraction(np.array([0, 0]), 0.5)


def test_balance_and_match_are_the_same_on_any_partitioning(spark):
    texts = random_texts(3000, seed=5)
    counts = Counter(i for t in texts for i in metaclip_match(t, ENTRIES))
    p = [ref_p(counts[i], 150.0) if counts[i] else 1.0 for i in range(len(ENTRIES))]
    expected = sorted(
        (f"u{i:05d}", tuple(ids)) for i, t in enumerate(texts) if (ids := metaclip_match(t, ENTRIES)) and ref_keep(11, f"u{i:05d}", ids, p)
    )
    results = []
    for parts in (1, 3, 16):
        matched = with_match_decisions(texts_frame(spark, texts, parts), ENTRIES)
        kept, _ = split_decisions(matched)
        balanced, ledger = split_decisions(with_balance_decisions(kept, np.array(p), seed=11, t=150.0))
        results.append((sorted((r.uid, tuple(r.entry_ids)) for r in balanced.collect()), sorted(map(tuple, ledger.collect()))))
    assert results[0] == results[1] == results[2]
    assert results[0][0] == expected
    assert 0 < len(expected) < sum(1 for t in texts if metaclip_match(t, ENTRIES))


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
    expected = Counter(ENTRIES[i] for t in texts for i in metaclip_match(t, ENTRIES))
    assert {e: c for e, c in counts.items() if c} == dict(expected)
    animal = outs[0][2][0]
    assert animal.concept == "animal"
    assert animal["count"] == sum(1 for t in texts if metaclip_match(t, ["dog", "cat", "bird"]))
    stats = json.loads((tmp_path / "run1" / "balance" / "stats.json").read_text())
    assert stats["expected_kept"] > 0 and stats["t_from"] == "tail_fraction=0.5"
    by_id = [expected[e] for e in ENTRIES]
    t_ref = ref_tail_threshold(by_id, 0.5)
    assert stats["t"] == t_ref and stats["tail_share"] == pytest.approx(sum(c for c in by_id if c < t_ref) / sum(by_id))
    # The kept subset is the documented draw for each uid the match stage kept.
    matched = spark.read.parquet(str(tmp_path / "run1" / "match" / "data")).select("uid", "text").collect()
    assert sorted(r.text for r in matched) == sorted(t for t in texts if metaclip_match(t, ENTRIES))
    p = [ref_p(c, t_ref) if c else 1.0 for c in by_id]
    kept = sorted((r.uid, tuple(ids)) for r in matched if ref_keep(3, r.uid, ids := metaclip_match(r.text, ENTRIES), p))
    assert outs[0][0] == kept and 0 < len(kept) < len(matched)


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
