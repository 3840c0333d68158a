"""The export's worldwide/ side files: per-language entry probabilities and every alt-text of each exported image.

The run folders are written by hand here, in the formats docs/worldwide_formats.md and the
worldwide design give (match/data with language columns and image_uid, match/languages.json,
count/data with language, balance/stats.json with t per language), so these tests do not
depend on the match, count and balance stages' code. tests/test_report.py builds its worldwide
run with `build_run` too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# Global entry ids: languages in code order, each language's entries in file order.
LISTS = {
    "de": ["Hund", "Katze", "Haus"],       # 0 1 2
    "en": ["dog", "cat", "house", "bird"],  # 3 4 5 6
    "th": ["แมว"],                          # 7: no text matches it, so th has no t
    "zh": ["猫", "狗", "房子"],              # 8 9 10
}
ENTRIES = [e for lang in sorted(LISTS) for e in LISTS[lang]]

# match/data: uid, image_uid, text, language (the pool's code), metadata_language, entry_ids.
# The entry ids follow MetaCLIP 2's rule on these texts (" Hund " in " ein Hund und ... ", 狗
# inside 一只狗). A twelfth image, "iJ" with the French "un chat", matched nothing (no fr list):
# it is in match's ledger, not in match/data.
MATCHED = [
    ("u01", "iA", "a dog and a cat", "en", "en", [3, 4]),
    ("u02", "iA", "ein Hund und eine Katze", "de", "de", [0, 1]),
    ("u03", "iB", "a dog", "en", "en", [3]),
    ("u04", "iB", "一只狗", "zh", "zh", [9]),
    ("u05", "iC", "a house", "en", "en", [5]),
    ("u06", "iD", "Katze", "de-AT", "de", [1]),
    ("u07", "iE", "猫", "zh", "zh", [8]),
    ("u08", "iE", "猫和狗", "zh-Hans", "zh", [8, 9]),
    ("u09", "iF", "dog house", "en", "en", [3, 5]),
    ("u10", "iG", "a dog", "en", "en", [3]),
    ("u11", "iH", "Hund", "de", "de", [0]),
    ("u12", "iH", "dog", "en", "en", [3]),
    ("u13", "iI", "Haus", "de", "de", [2]),
]
# Texts per entry over MATCHED (de: Hund u02 u11, Katze u02 u06, Haus u13; en: dog u01 u03 u09
# u10 u12, cat u01, house u05 u09; zh: 猫 u07 u08, 狗 u04 u08).
COUNTS = [2, 2, 1, 5, 1, 2, 0, 0, 2, 2, 0]
# MetaCLIP 2's t: en is given t = 3, so p = (1 + 2) / 8 = 0.375 (cat, house below 3, of 8
# matches). de sorted [1, 2, 2], cumulative shares 0.2, 0.6, 1: nearest to 0.375 is 0.2, t = 1.
# zh sorted [0, 2, 2], shares 0, 0.5, 1: nearest is 0.5, t = 2. th has no match: no t.
T_BY_LANGUAGE = {"de": 1.0, "en": 3.0, "th": None, "zh": 2.0}
# Balance's choice per image (one text) and draw: u10 (image iG) was balanced out.
CHOSEN = {"iA": "u02", "iB": "u03", "iC": "u05", "iD": "u06", "iE": "u08", "iF": "u09", "iG": "u10", "iH": "u12", "iI": "u13"}
BALANCED_OUT = {"u10"}
# keep_prob = 1 - prod(1 - p_i), p = 1 below t, else t / count: Hund, Katze 1/2; dog 3/5; the rest 1.
KEEP_PROB = {"u02": 0.75, "u03": 0.6, "u05": 1.0, "u06": 0.5, "u08": 1.0, "u09": 1.0, "u10": 0.6, "u12": 0.6, "u13": 1.0}


def _marker(d: Path, stage: str) -> None:
    (d / "_COMPLETE").write_text(json.dumps({"stage": stage, "fingerprint": f"hand-made {stage}", "at": "2025-01-01T00:00:00Z"}))


def _write(d: Path, table: pa.Table) -> None:
    (d / "data").mkdir(parents=True)
    pq.write_table(table, d / "data" / "part-00000.parquet")


def build_run(root: Path, per_language: bool = True, grouped: bool = True, balanced: bool = True) -> Path:
    """A run folder with complete match, count (and balance) stages, as the worldwide design writes them.

    per_language=False: one metadata list (no languages.json, no language columns, one t);
    grouped=False: no image_uid (every text its own image).
    """
    run = root / "run"
    ids = pa.list_(pa.field("element", pa.int32(), nullable=False))
    cols = {
        "uid": [r[0] for r in MATCHED], "text": [r[2] for r in MATCHED],
        "entry_ids": pa.array([r[5] for r in MATCHED], ids),
    }
    if grouped:
        cols["image_uid"] = [r[1] for r in MATCHED]
    if per_language:
        cols["language"] = [r[3] for r in MATCHED]
        cols["metadata_language"] = [r[4] for r in MATCHED]
    match = pa.table(cols)
    m = run / "match"
    _write(m, match)
    (m / "metadata.json").write_text(json.dumps(ENTRIES, ensure_ascii=False))
    match_stats = {"stage": "match", "rows_in": 14, "kept": 13, "dropped": {"no_concept_match": 1}, "dropped_total": 1,
                   "entries": len(ENTRIES), "match_mode": "metaclip", "metadata": "meta/"}
    if per_language:
        first, spans = 0, []
        for lang in sorted(LISTS):
            spans.append({"language": lang, "first": first, "entries": len(LISTS[lang])})
            first += len(LISTS[lang])
        (m / "languages.json").write_text(json.dumps(spans))
        match_stats["languages"] = {lang: len(v) for lang, v in LISTS.items()}
    (m / "stats.json").write_text(json.dumps(match_stats))
    _marker(m, "match")

    c = run / "count"
    count_cols = {
        "entry_id": pa.array(range(len(ENTRIES)), pa.int32()), "entry": ENTRIES,
        "count": pa.array(COUNTS, pa.int64()), "match_mode": ["metaclip"] * len(ENTRIES),
    }
    count_stats = {"stage": "count", "texts": 13, "entries": len(ENTRIES), "match_mode": "metaclip"}
    if per_language:
        count_cols["language"] = [lang for lang in sorted(LISTS) for _ in LISTS[lang]]
        count_stats["languages"] = {
            "de": {"texts": 4, "matches": 5}, "en": {"texts": 6, "matches": 8},
            "th": {"texts": 0, "matches": 0}, "zh": {"texts": 3, "matches": 4},
        }
    _write(c, pa.table(count_cols))
    (c / "stats.json").write_text(json.dumps(count_stats, ensure_ascii=False))
    _marker(c, "count")
    if not balanced:
        return run

    b = run / "balance"
    kept = [r for r in MATCHED if CHOSEN[r[1]] == r[0] and r[0] not in BALANCED_OUT]
    rows = match.filter(pa.array([r in kept for r in MATCHED]))
    rows = rows.add_column(3, "keep_prob", pa.array([KEEP_PROB[u] for u in rows.column("uid").to_pylist()], pa.float64()))
    _write(b, rows)
    bal_stats = {
        "stage": "balance", "rows_in": 13, "kept": len(kept), "dropped_total": 5,
        "dropped": {"alt_text_not_chosen": 4, "balanced_out": 1} if grouped else {"balanced_out": 5},
        "t": 3.0, "t_from": "t", "seed": 0, "counts": str(c / "data"), "input": str(m / "data"),
    }
    if per_language:
        bal_stats.update(
            reference_language="en", p=0.375, t_by_language=T_BY_LANGUAGE,
            tail_share_by_language={"de": 0.0, "en": 0.375, "th": None, "zh": 0.0},
            head_entries_by_language={"de": 3, "en": 1, "th": 0, "zh": 2},
            kept_by_language={"de": 3, "en": 4, "zh": 1},  # balance/data by metadata_language; none of th
        )
    if grouped:
        bal_stats["alt_texts"] = {"images": 9, "not_chosen": 4}
    (b / "stats.json").write_text(json.dumps(bal_stats))
    _marker(b, "balance")
    return run


def export(spark, run: Path, force: bool = False):
    """The export stage through the protocol, without shards (the run has no download stage)."""
    from pipeline.api import run_export
    from pipeline.registry import PipelineConfig
    from pipeline.stages.export import ExportConfig

    return run_export(spark, str(run), str(run), str(run), PipelineConfig(seed=0, export=ExportConfig(shards=False)), force=force)


def _texts(run: Path) -> list[dict]:
    return pq.read_table(run / "export" / "worldwide" / "texts.parquet").to_pylist()


# --------------------------------------------------------------------------- tests


def test_entry_probabilities_follow_each_languages_t():
    from pipeline.stages.export import entry_probabilities

    spans = [{"language": "de", "first": 0, "entries": 3}, {"language": "en", "first": 3, "entries": 4},
             {"language": "th", "first": 7, "entries": 1}, {"language": "zh", "first": 8, "entries": 3}]
    got = entry_probabilities(ENTRIES, np.array(COUNTS), spans, t_by_language=T_BY_LANGUAGE).to_pylist()
    assert [(r["language"], r["entry_id"], r["entry"], r["count"], r["t"], r["prob"]) for r in got] == [
        ("de", 0, "Hund", 2, 1.0, 0.5),     # count >= t: t / count
        ("de", 1, "Katze", 2, 1.0, 0.5),
        ("de", 2, "Haus", 1, 1.0, 1.0),     # count == t: t / count = 1
        ("en", 3, "dog", 5, 3.0, 0.6),
        ("en", 4, "cat", 1, 3.0, 1.0),      # count < t: 1
        ("en", 5, "house", 2, 3.0, 1.0),
        ("en", 6, "bird", 0, 3.0, 1.0),
        ("th", 7, "แมว", 0, None, 1.0),     # no t: the language has no match
        ("zh", 8, "猫", 2, 2.0, 1.0),
        ("zh", 9, "狗", 2, 2.0, 1.0),
        ("zh", 10, "房子", 0, 2.0, 1.0),
    ]
    one = entry_probabilities(["a", "b", "c"], np.array([10, 4, 0]), None, t=4.0).to_pylist()
    assert [(r["language"], r["t"], r["prob"]) for r in one] == [(None, 4.0, 0.4), (None, 4.0, 1.0), (None, 4.0, 1.0)]
    with pytest.raises(ValueError, match="does not cover every entry"):
        entry_probabilities(ENTRIES, np.array(COUNTS), spans[:3], t_by_language=T_BY_LANGUAGE)


@pytest.fixture(scope="module")
def exported(spark, tmp_path_factory):
    """The worldwide run with alt-texts, exported once for the tests that only read it."""
    run = build_run(tmp_path_factory.mktemp("worldwide"))
    return run, export(spark, run)


def test_worldwide_export_writes_entry_probs_and_every_alt_text_of_each_exported_image(spark, exported):
    run, result = exported
    ww = run / "export" / "worldwide"
    probs = pq.read_table(ww / "entry_probs.parquet")
    assert probs.schema.names == ["language", "entry_id", "entry", "count", "t", "prob"]
    assert [(r["language"], r["entry"], r["t"], r["prob"]) for r in probs.to_pylist()] == [
        ("de", "Hund", 1.0, 0.5), ("de", "Katze", 1.0, 0.5), ("de", "Haus", 1.0, 1.0),
        ("en", "dog", 3.0, 0.6), ("en", "cat", 3.0, 1.0), ("en", "house", 3.0, 1.0), ("en", "bird", 3.0, 1.0),
        ("th", "แมว", None, 1.0), ("zh", "猫", 2.0, 1.0), ("zh", "狗", 2.0, 1.0), ("zh", "房子", 2.0, 1.0),
    ]
    assert probs.column("entry_id").to_pylist() == list(range(11)) and probs.column("count").to_pylist() == COUNTS

    texts = _texts(run)
    assert list(texts[0]) == ["image_uid", "uid", "text", "language", "metadata_language", "entry_ids", "chosen"]
    # Image iG is not exported (its chosen text u10 was balanced out); every other image comes
    # with all its matched texts, the exported one marked chosen.
    assert [(r["image_uid"], r["uid"], r["chosen"]) for r in texts] == [
        ("iA", "u01", False), ("iA", "u02", True), ("iB", "u03", True), ("iB", "u04", False), ("iC", "u05", True),
        ("iD", "u06", True), ("iE", "u07", False), ("iE", "u08", True), ("iF", "u09", True),
        ("iH", "u11", False), ("iH", "u12", True), ("iI", "u13", True),
    ]
    u08 = next(r for r in texts if r["uid"] == "u08")
    assert (u08["text"], u08["language"], u08["metadata_language"], u08["entry_ids"]) == ("猫和狗", "zh-Hans", "zh", [8, 9])
    stats = json.loads((run / "export" / "stats.json").read_text())
    assert stats["worldwide"] == result.stats["worldwide"] == {
        "files": {"texts": "worldwide/texts.parquet", "entry_probs": "worldwide/entry_probs.parquet"},
        "rows": {"texts": 12, "entry_probs": 11}, "images": 8, "joined_on": "image_uid",
    }
    assert sorted(r.uid for r in spark.read.parquet(str(run / "export" / "data")).collect()) == [
        "u02", "u03", "u05", "u06", "u08", "u09", "u12", "u13"]


def test_a_loader_redoes_the_choice_and_the_sampling_from_the_two_files(exported):
    """What docs/worldwide_formats.md tells a loader to do: per image, any of its texts; keep it with 1 - prod(1 - p_i)."""
    run, _ = exported
    ww = run / "export" / "worldwide"
    prob = dict(zip(*pq.read_table(ww / "entry_probs.parquet", columns=["entry_id", "prob"]).to_pydict().values(), strict=True))
    by_image: dict[str, list[dict]] = {}
    for r in _texts(run):
        by_image.setdefault(r["image_uid"], []).append(r)
    keep = {r["uid"]: 1 - float(np.prod([1 - prob[i] for i in r["entry_ids"]])) for rows in by_image.values() for r in rows}
    assert keep == pytest.approx({
        "u01": 1.0, "u02": 0.75, "u03": 0.6, "u04": 1.0, "u05": 1.0, "u06": 0.5, "u07": 1.0, "u08": 1.0,
        "u09": 1.0, "u11": 0.5, "u12": 0.6, "u13": 1.0,
    })
    # The chosen texts' probabilities are the ones balance drew them with.
    chosen = {r["uid"]: keep[r["uid"]] for rows in by_image.values() for r in rows if r["chosen"]}
    assert chosen == pytest.approx({u: KEEP_PROB[u] for u in chosen})
    # One epoch: a text per image (uniform), then the draw; the same two files for any epoch.
    rng = np.random.default_rng(0)
    epoch = [rows[rng.integers(len(rows))] for _, rows in sorted(by_image.items())]
    assert len(epoch) == 8 and all(r["image_uid"] == img for r, img in zip(epoch, sorted(by_image), strict=True))


def test_single_list_with_alt_texts_gives_one_t_and_null_languages(spark, tmp_path):
    run = build_run(tmp_path, per_language=False)
    export(spark, run)
    probs = pq.read_table(run / "export" / "worldwide" / "entry_probs.parquet").to_pylist()
    assert {r["language"] for r in probs} == {None} and {r["t"] for r in probs} == {3.0}
    # One list, t = 3: Hund, Katze (2) now below t; dog 5 -> 3/5.
    assert [r["prob"] for r in probs] == [1.0, 1.0, 1.0, 0.6, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    texts = _texts(run)
    assert len(texts) == 12 and {(r["language"], r["metadata_language"]) for r in texts} == {(None, None)}
    assert sum(r["chosen"] for r in texts) == 8


def test_worldwide_without_alt_texts_or_balance_joins_on_uid_and_says_why_no_probabilities(spark, tmp_path):
    run = build_run(tmp_path, grouped=False, balanced=False)
    result = export(spark, run)  # from match: every matched text is exported
    texts = _texts(run)
    assert list(texts[0]) == ["uid", "text", "language", "metadata_language", "entry_ids", "chosen"]
    assert [r["uid"] for r in texts] == [r[0] for r in MATCHED] and all(r["chosen"] for r in texts)
    assert not (run / "export" / "worldwide" / "entry_probs.parquet").exists()
    ww = result.stats["worldwide"]
    assert ww["rows"] == {"texts": 13} and ww["images"] == 13 and ww["joined_on"] == "uid"
    assert ww["entry_probs_missing"].startswith("no complete balance stage")


def test_single_list_without_alt_texts_writes_nothing_new(spark, tmp_path):
    run = build_run(tmp_path, per_language=False, grouped=False)
    result = export(spark, run)
    assert not (run / "export" / "worldwide").exists() and "worldwide" not in result.stats
    assert sorted(p.name for p in (run / "export").iterdir() if not p.name.startswith(".")) == [
        "_COMPLETE", "data", "stats.json", "uids.txt"]


def test_worldwide_run_whose_balance_has_no_t_by_language_is_refused(spark, tmp_path):
    from pipeline.stages.export import ExportError

    run = build_run(tmp_path)
    stats = json.loads((run / "balance" / "stats.json").read_text())
    del stats["t_by_language"]
    (run / "balance" / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(ExportError, match="no t_by_language"):
        export(spark, run)
    assert not (run / "export" / "_COMPLETE").exists()


# --------------------------------------------------------------------------- the same pool through the real stages


def build_staged_run(spark, root: Path) -> Path:
    """MATCHED's captions (and the French one that matches nothing) through ingest -> match -> count -> balance.

    One url per image, so ingest's group_alt_texts="url" gives MATCHED's images; LISTS as a
    folder of <language>.json; t = 3 for English.
    """
    from pipeline.api import run_balance, run_count, run_ingest, run_match
    from pipeline.registry import PipelineConfig
    from pipeline.stages.balance import BalanceConfig
    from pipeline.stages.ingest import IngestConfig
    from pipeline.stages.match import MatchConfig

    pool = [(u, f"http://img.test/{img}.jpg", text, code) for u, img, text, code, _, _ in MATCHED]
    pool.append(("u14", "http://img.test/iJ.jpg", "un chat", "fr"))
    (root / "pool").mkdir()
    pq.write_table(pa.table(dict(zip(("uid", "url", "text", "language"), map(list, zip(*pool, strict=True)), strict=True))),
                   root / "pool" / "part-0.parquet")
    meta = root / "metadata"
    meta.mkdir()
    for lang, entries in LISTS.items():
        (meta / f"{lang}.json").write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    cfg = PipelineConfig(
        seed=0, ingest=IngestConfig(group_alt_texts="url"), match=MatchConfig(metadata=str(meta)), balance=BalanceConfig(t=3),
    )
    run = root / "run"
    run_ingest(spark, str(root / "pool"), str(run), cfg)
    run_match(spark, str(run), str(run), cfg)
    run_count(spark, str(run), str(run), cfg)
    run_balance(spark, str(run), None, str(run), cfg)
    return run


def test_a_run_made_by_the_stages_exports_what_the_hand_made_run_says(spark, tmp_path):
    """The real match, count and balance write the formats build_run assumes, and the export agrees with balance."""
    run = build_staged_run(spark, tmp_path)
    # The stages' outputs are the hand-made run's: counts, t per language.
    count = pq.read_table(run / "count" / "data").to_pylist()
    assert [(r["entry"], r["language"], r["count"]) for r in count] == list(
        zip(ENTRIES, [lang for lang in sorted(LISTS) for _ in LISTS[lang]], COUNTS, strict=True))
    bal = json.loads((run / "balance" / "stats.json").read_text())
    assert bal["t_by_language"] == T_BY_LANGUAGE and bal["p"] == 0.375

    result = export(spark, run)
    ww = run / "export" / "worldwide"
    probs = pq.read_table(ww / "entry_probs.parquet").to_pylist()
    assert [r["prob"] for r in probs] == [0.5, 0.5, 1.0, 0.6, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    texts = _texts(run)
    exported = {r.uid for r in spark.read.parquet(str(run / "export" / "data")).collect()}
    by_image: dict[str, list[dict]] = {}
    for r in texts:
        by_image.setdefault(r["image_uid"], []).append(r)
    # Every exported image with all its matched texts (MATCHED's grouping), exactly its exported text chosen.
    groups = {}
    for u, img, *_ in MATCHED:
        groups.setdefault(img, set()).add(u)
    assert sorted(sorted(r["uid"] for r in rows) for rows in by_image.values()) == sorted(
        sorted(g) for g in groups.values() if g & exported)
    assert {r["uid"] for r in texts if r["chosen"]} == exported
    assert all(sum(r["chosen"] for r in rows) == 1 for rows in by_image.values())
    # The chosen text's 1 - prod(1 - p_i) from entry_probs is balance's own keep_prob for it.
    p = [r["prob"] for r in probs]
    keep_prob = {r.uid: r.keep_prob for r in spark.read.parquet(str(run / "balance" / "data")).collect()}
    for r in texts:
        if r["chosen"]:
            assert 1 - float(np.prod([1 - p[i] for i in r["entry_ids"]])) == pytest.approx(keep_prob[r["uid"]]), r["uid"]
    assert result.stats["worldwide"]["rows"] == {"texts": len(texts), "entry_probs": 11}
    assert result.stats["worldwide"]["images"] == len(by_image) == len(exported)
    # The report over the same run reads the stages' real stats: the hand-made run's figures.
    from pipeline.api import run_report
    from pipeline.registry import PipelineConfig

    run_report(spark, str(run), PipelineConfig(seed=0))
    langs = pq.read_table(run / "reports" / "languages.parquet").to_pylist()
    kept = {}
    for r in spark.read.parquet(str(run / "balance" / "data")).select("metadata_language").collect():
        kept[r.metadata_language] = kept.get(r.metadata_language, 0) + 1
    assert [(r["language"], r["texts"], r["matches"], r["t"], r["tail_share"], r["head_entries"], r["kept_after_balance"])
            for r in langs] == [
        ("en", 6, 8, 3.0, 0.375, 1, kept.get("en", 0)), ("de", 4, 5, 1.0, 0.0, 3, kept.get("de", 0)),
        ("zh", 3, 4, 2.0, 0.0, 2, kept.get("zh", 0)), ("th", 0, 0, None, None, 0, 0),
    ]
