"""The report: long-tail kernels on hand-computable inputs, a small run's report files, the paper's numbers."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.api import run_report
from pipeline.cli import main
from pipeline.stages.report import (
    ReportError,
    accuracy_fit,
    band_counts,
    export_summary,
    frequency_table,
    funnel_figure,
    funnel_table,
    gini,
    long_tail_stats,
    never_matched,
    normalised_entropy,
    rarest,
    tail_histogram_figure,
    zipf_exponent,
)
from tests.conftest import anchor

# --------------------------------------------------------------------------- kernels


def test_frequency_table_ranks_shares_and_buckets():
    counts = pd.Series({"b": 40, "a": 40, "c": 10, "d": 6, "e": 4, "z": 0})
    t = frequency_table(counts)
    assert t["concept"].tolist() == ["a", "b", "c", "d", "e", "z"]  # tie a/b broken by name
    assert t["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    assert t["share"].tolist() == pytest.approx([0.4, 0.4, 0.1, 0.06, 0.04, 0.0])
    assert t["cumulative_share"].tolist() == pytest.approx([0.4, 0.8, 0.9, 0.96, 1.0, 1.0])
    # head: before-share 0 and 0.4 < 0.5; torso: 0.8 < 0.9; tail: from 0.9 on, and zeros
    assert t["bucket"].tolist() == ["head", "head", "torso", "tail", "tail", "tail"]


def test_frequency_table_with_no_matches_is_all_tail():
    t = frequency_table(pd.Series({"a": 0, "b": 0}))
    assert t["bucket"].tolist() == ["tail", "tail"] and t["share"].tolist() == [0.0, 0.0]


def test_gini_entropy_and_zipf_on_hand_computable_inputs():
    assert gini(np.full(7, 5)) == pytest.approx(0.0)
    for n in (2, 5, 100):
        one_hot = np.zeros(n)
        one_hot[3 % n] = 9
        assert gini(one_hot) == pytest.approx((n - 1) / n)
        assert normalised_entropy(one_hot) == pytest.approx(0.0)
        assert normalised_entropy(np.ones(n)) == pytest.approx(1.0)
    # two of four concepts equally used: H = log 2, normalised by log 4
    assert normalised_entropy(np.array([3, 3, 0, 0])) == pytest.approx(0.5)
    assert gini(np.zeros(3)) is None and normalised_entropy(np.zeros(3)) is None
    for s in (0.8, 1.0, 1.7):
        exact = 1e6 / np.arange(1, 201) ** s
        got, r2 = zipf_exponent(np.concatenate([exact, np.zeros(5)])[::-1])
        assert got == pytest.approx(s, rel=1e-9) and r2 == pytest.approx(1.0)
    assert zipf_exponent(np.array([4, 0, 0])) == (None, None)


def test_long_tail_stats():
    counts = pd.Series({f"c{i}": v for i, v in enumerate([1000, 500, 150, 99, 50, 9, 1, 0, 0, 0])})
    s = long_tail_stats(counts, t=200)
    assert (s["zero"], s["lt_10"], s["lt_100"], s["lt_t"]) == (3, 5, 7, 8)
    assert s["concepts"] == 10 and s["total_matches"] == 1809
    assert s["top1pct_concepts"] == 1 and s["top1pct_share"] == pytest.approx(1000 / 1809)
    assert s["buckets"] == {"head": 1, "torso": 2, "tail": 7}
    assert long_tail_stats(counts)["lt_t"] is None


def test_accuracy_fit_recovers_a_synthetic_log_linear_law():
    rng = np.random.default_rng(0)
    freq = pd.Series(10 ** rng.uniform(0, 6, 300), index=[f"k{i}" for i in range(300)])
    exact = 12.5 * np.log10(freq) + 3.0
    fit = accuracy_fit(freq, exact)
    assert fit["slope"] == pytest.approx(12.5) and fit["intercept"] == pytest.approx(3.0)
    assert fit["pearson_r"] == pytest.approx(1.0) and fit["n"] == 300
    noisy = exact + rng.normal(0, 10, 300)
    fit = accuracy_fit(freq, noisy)
    lx = np.log10(freq.to_numpy())
    assert fit["pearson_r"] == pytest.approx(np.corrcoef(lx, noisy)[0, 1])
    assert 0 < fit["pearson_r"] < 1 and fit["slope"] == pytest.approx(12.5, abs=1.5)
    # zero frequencies and one-sided concepts are counted, not fitted
    f = pd.Series({"a": 0, "b": 10, "c": 100, "d": 1000, "only_f": 5})
    a = pd.Series({"a": 1.0, "b": 20.0, "c": 40.0, "d": 60.0, "only_a": 9.0})
    fit = accuracy_fit(f, a)
    assert fit["n"] == 3 and fit["n_zero_frequency"] == 1
    assert fit["n_accuracy_without_frequency"] == 1 and fit["n_frequency_without_accuracy"] == 1
    assert fit["slope"] == pytest.approx(20.0) and fit["intercept"] == pytest.approx(0.0)
    assert accuracy_fit({"a": 1}, {"a": 2.0})["slope"] is None


def test_funnel_table_lists_row_stages_in_order_kept_first_then_reasons_by_size():
    stats = {
        "ingest": {"rows_in": 100, "kept": 90, "dropped": {"empty_text": 10}, "dropped_total": 10},
        "count": {"texts": 90, "entries": 5},  # not a row stage: left out
        "filter": {"rows_in": 90, "kept": 30, "dropped_total": 60,
                   "dropped": {"duplicate_image": 5, "low_clip_score": 50, "caption_too_short": 5}},
        "embed": {"rows_in": 0, "kept": 0, "dropped": {}, "dropped_total": 0},
    }
    got = funnel_table(stats)
    assert list(got.columns) == ["stage", "rows_in", "outcome", "rows", "share"]
    assert got.drop(columns="share").values.tolist() == [
        ["ingest", 100, "kept", 90],
        ["ingest", 100, "empty_text", 10],
        ["filter", 90, "kept", 30],
        ["filter", 90, "low_clip_score", 50],
        ["filter", 90, "caption_too_short", 5],  # a tie with duplicate_image: by name
        ["filter", 90, "duplicate_image", 5],
        ["embed", 0, "kept", 0],
    ]
    assert got["share"].tolist() == pytest.approx([0.9, 0.1, 1 / 3, 5 / 9, 1 / 18, 1 / 18, 0.0])


def test_funnel_figure_stacks_kept_and_each_reason_in_one_bar_per_stage():
    import matplotlib.pyplot as plt

    stats = {
        "ingest": {"rows_in": 100, "kept": 90, "dropped": {"empty_text": 10}},
        "count": {"texts": 90},
        "filter": {"rows_in": 90, "kept": 60, "dropped": {"low_clip_score": 20, "caption_too_short": 10}},
    }
    fig = funnel_figure(funnel_table(stats))
    try:
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.get_yticklabels()] == ["ingest", "filter"]
        bars = [(round(p.get_y() + p.get_height() / 2), p.get_x(), p.get_width()) for p in ax.patches]
        assert bars == [(0, 0, 90), (0, 90, 10), (1, 0, 60), (1, 60, 20), (1, 80, 10)]
        fig.canvas.draw()
        assert ax.patches[0].get_window_extent().y0 > ax.patches[2].get_window_extent().y1  # the pipeline reads downward
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["kept", "empty_text", "low_clip_score", "caption_too_short"]
        texts = {t.get_text() for t in ax.texts}
        assert {"90 of 100 kept (90.0%)", "60 of 90 kept (66.7%)"} <= texts
    finally:
        plt.close(fig)


def test_rarest_lists_only_entries_that_occur_and_never_matched_keeps_the_metadata_order():
    counts = pd.Series({"zebra": 0, "dog": 50, "owl": 1, "cat": 3, "yak": 0, "ant": 1, "emu": 0})
    table = frequency_table(counts)
    assert rarest(table, 3)[["concept", "count"]].values.tolist() == [["ant", 1], ["owl", 1], ["cat", 3]]
    assert rarest(table)["concept"].tolist() == ["ant", "owl", "cat", "dog"]
    assert rarest(frequency_table(pd.Series({"a": 0}))).empty
    assert never_matched(counts) == ["zebra", "yak", "emu"]


def test_band_chart_shows_every_band_beside_a_huge_zero_band():
    import matplotlib.pyplot as plt

    counts = pd.Series({**{f"z{i}": 0 for i in range(10_000)}, "a": 5, "b": 50, "c": 500, "d": 7})
    bands = band_counts({"matched": frequency_table(counts), "pruned": frequency_table(counts.clip(upper=9))})
    assert bands.index.tolist() == ["0", "1-9", "10-99", "100-999"]
    assert bands["matched"].tolist() == [10_000, 2, 1, 1] and bands["pruned"].tolist() == [10_000, 4, 0, 0]
    fig = tail_histogram_figure({"matched": frequency_table(counts)})
    try:
        fig.canvas.draw()
        ax = fig.axes[0]
        heights = [p.get_window_extent().height for p in ax.patches]
        assert len(heights) == 4
        # one concept in a band stands at least a twentieth as tall as 10,000 in the zero band
        # (on a linear axis it would be 1/10,000 of it: a line under a pixel)
        assert min(heights[1:]) >= heights[0] / 20, heights
        assert [t.get_text() for t in ax.texts] == ["10,000", "2", "1", "1"]
    finally:
        plt.close(fig)


EXPORT_STATS = {
    "stage": "export", "rows_in": 1200, "kept": 1200, "dropped": {}, "dropped_total": 0, "uid_list": "uids.npy",
    "shards": {"count": 3, "total": 1200, "bytes": 3_145_728, "samples_per_shard": 500, "image_format": "webp"},
}


def test_export_summary_gives_counts_shards_and_sizes():
    assert export_summary("/r", {"export": EXPORT_STATS}) == {
        "samples": "1,200",
        "subset (Parquet)": "/r/export/data",
        "uid list": "/r/export/uids.npy",
        "shards": "3",
        "shard files": "/r/export/shards/00000.tar ... 00002.tar, samples per shard in shards/sizes.json",
        "samples in shards": "1,200",
        "samples per shard": "500",
        "image format": "webp",
        "shard bytes": "3,145,728 bytes (3.0 MiB)",
        "mean bytes per shard": "1,048,576 bytes (1.0 MiB)",
    }
    plain = {"rows_in": 7, "kept": 7, "uid_list": "uids.txt", "uid_list_reason": "7 uids are not 32 hex digits"}
    assert export_summary("/r", {"export": plain}) == {
        "samples": "7",
        "subset (Parquet)": "/r/export/data",
        "uid list": "/r/export/uids.txt (7 uids are not 32 hex digits)",
        "shards": "not written (export ran without shards)",
    }
    assert export_summary("/r", {"embed": {"shards": 1}}) is None


# --------------------------------------------------------------------------- a small run

WORDS = [
    "dog", "cat", "bird", "fish", "horse", "cow", "sheep", "goat", "lion", "tiger", "bear", "wolf",
    "fox", "deer", "frog", "owl", "duck", "crab", "seal", "whale", "zebra", "camel", "llama", "moose",
]
ENTRIES = [*WORDS, "unicorn"]  # "unicorn" never occurs: a zero-count entry
CONCEPTS = {
    "canine": ["dog", "wolf", "fox"],
    "feline": ["cat", "lion", "tiger"],
    "bovine": ["cow"],
    "aquatic": ["fish", "crab", "seal", "whale"],
    "bird": ["bird", "owl", "duck"],
    "mythical": ["unicorn"],
}
ACCURACY = {"canine": 85.0, "feline": 80.0, "bovine": 50.0, "aquatic": 60.0, "bird": 70.0, "mythical": 5.0, "martian": 1.0}


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(WORDS) + 1) ** 1.3
    p /= p.sum()
    out = []
    for i in range(n):
        if i % 10 == 0:
            out.append(f"nothing to see {i}")  # unmatched: goes to the match stage's ledger
            continue
        k = int(rng.integers(1, 4))
        out.append("a " + " and ".join(rng.choice(WORDS, size=k, replace=False, p=p)) + " in a field")
    return out


@pytest.fixture(scope="module")
def small_run(spark, tmp_path_factory):
    from pipeline.api import run_balance, run_count, run_match
    from pipeline.core.folder import RunFolder as Run
    from pipeline.registry import PipelineConfig
    from pipeline.stages.balance import BalanceConfig
    from pipeline.stages.count import CountConfig
    from pipeline.stages.match import MatchConfig

    root = tmp_path_factory.mktemp("report")
    pool = root / "pool"
    pool.mkdir()
    texts = _texts(2000)
    # match reads a uid, text Parquet folder directly; skipping ingest keeps the test short
    pq.write_table(pa.table({"uid": [f"u{i:05d}" for i in range(len(texts))], "text": texts}), pool / "part-0.parquet")
    (root / "metadata.json").write_text(json.dumps(ENTRIES))
    (root / "concepts.json").write_text(json.dumps(CONCEPTS))
    (root / "accuracy.json").write_text(json.dumps(ACCURACY))
    cfg = PipelineConfig(
        seed=1,
        match=MatchConfig(metadata=str(root / "metadata.json")),
        count=CountConfig(concepts=str(root / "concepts.json")),
        balance=BalanceConfig(tail_fraction=0.3),
    )
    run = str(root / "run")
    Run(spark, run).write_run_json(cfg.to_dict(), cfg.seed, ["test"])
    run_match(spark, str(pool), run, cfg)
    run_count(spark, run, run, cfg)
    run_balance(spark, run, None, run, cfg)
    result = report(spark, run, concepts=str(root / "concepts.json"), accuracy=str(root / "accuracy.json"))
    return root, run, result


def report(spark, run: str, **files):
    """The report stage through the protocol, with the report config's concept and accuracy files."""
    from pipeline.registry import PipelineConfig
    from pipeline.stages.report import ReportConfig

    return run_report(spark, run, PipelineConfig(seed=1, report=ReportConfig(**files))).stats


def test_report_writes_every_file(small_run):
    root, run, result = small_run
    reports = root / "run" / "reports"
    expected = {
        "concept_frequency.parquet", "long_tail.json", "rank_frequency.png", "tail_histogram.png",
        "downstream_coverage.parquet", "accuracy_fit.json", "accuracy_vs_frequency.png", "report.html", "datacard.md",
        "funnel.png", "never_matched.txt", "never_matched_concepts.txt",
    }
    # .crc: Hadoop checksums; the report is a stage like the others: stats.json, then its marker
    assert {p.name for p in reports.iterdir() if not p.name.startswith(".")} == expected | {"stats.json", "_COMPLETE"}
    assert all((reports / name).stat().st_size > 0 for name in expected)
    assert result["html"].endswith("reports/report.html") and result["steps"] == ["matched", "balanced"]
    assert json.loads((reports / "stats.json").read_text())["html"] == result["html"]
    # "unicorn" is the one entry no text holds; "mythical" is the concept made of it alone
    assert (reports / "never_matched.txt").read_text() == "unicorn\n" and result["never_matched"] == 1
    assert (reports / "never_matched_concepts.txt").read_text() == "mythical\n"
    assert not (root / "run" / "_scratch").exists() and not (root / "run" / "_tmp").exists()


def test_concept_frequency_follows_each_entry_through_balancing(small_run):
    root, _, _ = small_run
    freq = pd.read_parquet(root / "run" / "reports" / "concept_frequency.parquet")
    assert list(freq.columns) == ["step", "concept", "count", "rank", "share", "cumulative_share", "bucket"]
    assert set(freq["step"]) == {"matched", "balanced"}
    wide = freq.pivot(index="concept", columns="step", values="count")
    assert len(wide) == len(ENTRIES) and not wide.isna().any().any()
    assert (wide["balanced"] <= wide["matched"]).all()
    assert wide["balanced"].sum() < wide["matched"].sum()  # balancing removed something
    assert wide.loc["unicorn", "matched"] == 0
    # the matched step is the count stage's table
    counts = pd.read_parquet(root / "run" / "count" / "data").set_index("entry")["count"]
    assert wide["matched"].sort_index().tolist() == counts.sort_index().tolist()
    long_tail = json.loads((root / "run" / "reports" / "long_tail.json").read_text())
    assert set(long_tail) == {"matched", "balanced"}
    assert long_tail["matched"]["zero"] == 1 and long_tail["balanced"]["gini"] < long_tail["matched"]["gini"]
    assert long_tail["matched"]["t"] is not None  # the balance stage's t


def test_downstream_coverage_and_accuracy_fit(small_run):
    root, _, result = small_run
    cov = pd.read_parquet(root / "run" / "reports" / "downstream_coverage.parquet")
    matched = cov[cov["step"] == "matched"].set_index("concept")
    concepts = pd.read_parquet(root / "run" / "count" / "concepts").set_index("concept")
    assert matched["count"].to_dict() == concepts["count"].to_dict()
    assert matched["most_common_synonym"].to_dict() == concepts["most_common_synonym"].to_dict()
    assert matched.loc["mythical", "count"] == 0
    fit = json.loads((root / "run" / "reports" / "accuracy_fit.json").read_text())
    assert fit["n"] == 5 and fit["n_zero_frequency"] == 1 and fit["n_accuracy_without_frequency"] == 1
    assert fit == result["accuracy_fit"]


def test_html_is_self_contained_with_tables_and_embedded_pngs(small_run):
    from PIL import Image

    root, _, _ = small_run
    page = (root / "run" / "reports" / "report.html").read_text()
    assert "<table" in page and 'class="dataframe frequency"' in page and 'class="long-tail"' in page
    assert 'class="dataframe coverage"' in page and 'class="accuracy-fit"' in page
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4 and page.count("<img") == 4  # funnel, rank-frequency, bands, accuracy
    for b64 in images:
        data = base64.b64decode(b64)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG" and im.size[0] > 0 and im.size[1] > 0
    card = (root / "run" / "reports" / "datacard.md").read_text()
    for needle in ("## What went in", "### Resolved config", "### balance", "no_concept_match", "## What came out",
                   "- metadata entries never matched: 1 of 25 (`reports/never_matched.txt`)",
                   "- downstream concepts: 6, with no matching text: 1 (`reports/never_matched_concepts.txt`)"):
        assert needle in card


def _table(page: str, cls: str) -> list[list[str]]:
    """The cells of each body row of the page's first table of class `cls`."""
    table = re.search(rf'<table class="{cls}">(.*?)</table>', page, re.S).group(1)
    return [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table) if "<td>" in row]


def test_html_lists_the_rarest_that_occur_and_counts_the_never_matched(small_run):
    root, _, _ = small_run
    page = (root / "run" / "reports" / "report.html").read_text()
    # the zero-count entry and concept are a figure and a file, not table rows
    assert "unicorn" not in page and "mythical" not in page
    assert 'Entries never matched: 1 of 25, listed in <a href="never_matched.txt">never_matched.txt</a>.' in page
    assert ('Entries with no text at this step: 1 of 25 (never matched: 1, listed in <a href="never_matched.txt">'
            "never_matched.txt</a>; lost since matching: 0).") in page
    assert 'Concepts with no matching text: 1 of 6, listed in <a href="never_matched_concepts.txt">' in page
    rarest_tables = re.findall(r"<h3>Rarest that occur</h3>.*?<table[^>]*>(.*?)</table>", page, re.S)
    assert len(rarest_tables) == 2  # matched, balanced
    for table in rarest_tables:
        rows = [re.findall(r"<td>(.*?)</td>", row, re.S) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)]
        counts = [int(cells[1]) for cells in rows if cells]
        assert len(counts) == 24 and min(counts) > 0 and counts == sorted(counts)  # the 24 words, rarest first
    # the funnel: the match stage drops the 200 texts "nothing to see i" (every tenth of 2,000)
    funnel = _table(page, "funnel")
    assert funnel[:2] == [["match", "2,000", "kept", "1,800", "90.0%"], ["match", "2,000", "no_concept_match", "200", "10.0%"]]
    assert [row[0] for row in funnel[2:]] == ["balance", "balance"] and funnel[2][1] == "1,800"
    assert [row[2] for row in funnel[2:]] == ["kept", "balanced_out"]


def test_report_shows_filter_rules_in_the_funnel_and_the_export(small_run, spark, tmp_path):
    """Fake filter and export stats.json in a copy of the run: the report reads only those for both."""
    from pipeline.core.folder import RunFolder
    from pipeline.registry import STAGES
    from pipeline.stages.report import write_report

    root, _, _ = small_run
    copy = tmp_path / "run"
    shutil.copytree(root / "run", copy, ignore=lambda d, names: ["reports"] if Path(d) == root / "run" else [])
    (copy / "filter").mkdir()
    (copy / "filter" / "stats.json").write_text(json.dumps({
        "stage": "filter", "rows_in": 1000, "kept": 700, "dropped_total": 300,
        "dropped": {"caption_too_short": 50, "low_clip_score": 200, "duplicate_image": 50},
    }))
    (copy / "export").mkdir()
    (copy / "export" / "stats.json").write_text(json.dumps(EXPORT_STATS))
    result = write_report(RunFolder(spark, str(copy)), None, None, str(copy / "reports"), STAGES)
    files = result["_files"]
    assert {"funnel.png", "never_matched.txt", "report.html", "datacard.md"} <= set(files)
    assert "never_matched_concepts.txt" in files  # from the count stage's concepts table
    page = files["report.html"].decode()
    funnel = _table(page, "funnel")
    assert [row[0] for row in funnel] == ["match", "match", "balance", "balance", "filter", "filter", "filter", "filter", "export"]
    assert funnel[4:] == [
        ["filter", "1,000", "kept", "700", "70.0%"],
        ["filter", "1,000", "low_clip_score", "200", "20.0%"],
        ["filter", "1,000", "caption_too_short", "50", "5.0%"],
        ["filter", "1,000", "duplicate_image", "50", "5.0%"],
        ["export", "1,200", "kept", "1,200", "100.0%"],
    ]
    where = f"{copy}/export"
    assert _table(page, "export") == [
        ["samples", "1,200"],
        ["subset (Parquet)", f"{where}/data"],
        ["uid list", f"{where}/uids.npy"],
        ["shards", "3"],
        ["shard files", f"{where}/shards/00000.tar ... 00002.tar, samples per shard in shards/sizes.json"],
        ["samples in shards", "1,200"],
        ["samples per shard", "500"],
        ["image format", "webp"],
        ["shard bytes", "3,145,728 bytes (3.0 MiB)"],
        ["mean bytes per shard", "1,048,576 bytes (1.0 MiB)"],
    ]
    card = files["datacard.md"].decode()
    assert "### Export\n\n- samples: 1,200\n" in card
    assert "- shards: 3\n" in card and "- shard bytes: 3,145,728 bytes (3.0 MiB)\n" in card
    assert f"- final stage `export`: 1200 texts in `{copy}/export/data`" in card
    # funnel, rank-frequency, bands (no accuracy file here)
    assert page.count('<img src="data:image/png;base64,') == 3


def test_report_without_a_concepts_file_uses_the_count_stage_and_cli_hook(small_run, spark, capsys):
    root, run, _ = small_run
    # `--run` is kept as another name of `--output`, the run folder.
    assert main(["report", "--run", run, "--accuracy", str(root / "accuracy.json")]) == 0
    assert json.loads(capsys.readouterr().out)["html"] == f"{run}/reports/report.html"
    fit = json.loads((root / "run" / "reports" / "accuracy_fit.json").read_text())
    assert fit["n"] == 5 and fit["frequency_source"].startswith("downstream concepts")
    cov = pd.read_parquet(root / "run" / "reports" / "downstream_coverage.parquet")
    assert set(cov["step"]) == {"matched"}


def test_bad_inputs_give_clear_errors(small_run, spark, tmp_path):
    root, run, _ = small_run
    bad = tmp_path / "acc.json"
    bad.write_text(json.dumps({"martian": 3.0, "venusian": 4.0}))
    with pytest.raises(ReportError, match="none of its 2 concepts"):
        report(spark, run, accuracy=str(bad))
    bad.write_text(json.dumps({"canine": "high"}))
    with pytest.raises(ReportError, match="must be numbers"):
        report(spark, run, accuracy=str(bad))
    with pytest.raises(FileNotFoundError, match="no complete match stage"):
        report(spark, str(tmp_path / "empty-run"))
    # A report that fails late (no concept of the accuracy file has a count) is not marked complete.
    assert not (Path(run) / "reports" / "_COMPLETE").exists()
    report(spark, run, concepts=str(root / "concepts.json"), accuracy=str(root / "accuracy.json"))  # for the tests after
    assert (Path(run) / "reports" / "_COMPLETE").exists()


# --------------------------------------------------------------------------- the paper's numbers

PAPER_MODEL = "backboneViT-B-32_pretrainedlaion400m"


def _paper_data(dataset: str, model: str = PAPER_MODEL) -> tuple[dict, dict] | None:
    """({class: LAION-400M count}, {class: zero-shot accuracy}) from the paper's files."""
    base = "frequency_determines_performance"
    counts_path = anchor(f"{base}/search_counts")
    counts_file = counts_path / f"{dataset}_laion400m_integrated_tlemmatized_i0.7_search_counts.json"
    evals_file = anchor(f"{base}/zero_shot_evaluations") / f"{dataset}_ensemble_results.json"
    if not counts_file.exists() or not evals_file.exists():
        return None
    evals = json.loads(evals_file.read_text())
    if model not in evals:
        return None
    return json.loads(counts_file.read_text()), evals[model]["classwise"]


def _paper_fit(dataset: str, model: str = PAPER_MODEL) -> dict | None:
    data = _paper_data(dataset, model)
    return None if data is None else accuracy_fit(*data)


def _textbook_fit(counts: dict, accuracy: dict) -> tuple[int, float, float]:
    """(n, slope, Pearson r) of accuracy on log10(count), classes with a count > 0: the closed forms."""
    points = [(math.log10(counts[c]), a) for c, a in accuracy.items() if counts.get(c, 0) > 0]
    lx = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    sxy = float(((lx - lx.mean()) * (y - y.mean())).sum())
    sxx = float(((lx - lx.mean()) ** 2).sum())
    syy = float(((y - y.mean()) ** 2).sum())
    return len(points), sxy / sxx, sxy / math.sqrt(sxx * syy)


@pytest.mark.shared
def test_paper_counts_and_accuracies_are_log_linear():
    """Udandarao et al. 2024: zero-shot accuracy grows linearly in log10 of pretraining concept frequency."""
    fit = _paper_fit("imagenet")
    assert fit is not None and fit["n"] > 500
    assert fit["slope"] > 0 and fit["pearson_r"] > 0
    lines = []
    for dataset in ("imagenet", "cifar100", "cifar10", "caltech101", "food101", "sun397", "imagenet-sketch"):
        for model in (PAPER_MODEL, "backboneViT-B-16_pretrainedlaion400m", "backboneViT-L-14_pretrainedlaion400m"):
            f = _paper_fit(dataset, model)
            if f is not None and f["slope"] is not None:
                lines.append(f"{dataset:16s} {model:40s} n={f['n']:4d} slope={f['slope']:+.3f} r={f['pearson_r']:+.3f}")
                n, slope, r = _textbook_fit(*_paper_data(dataset, model))
                assert f["n"] == n
                assert f["slope"] == pytest.approx(slope, rel=1e-9, abs=1e-12)
                assert f["pearson_r"] == pytest.approx(r, rel=1e-9, abs=1e-12)
    print("\naccuracy vs log10(LAION-400M count):\n" + "\n".join(lines))
    # the paper's trend holds for the bigger class lists
    assert _paper_fit("cifar100")["slope"] > 0


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh installs it)")
def test_report_opens_in_headless_chromium_without_errors(small_run):
    """The page loads with no console errors, every image decodes, the tables are there."""
    from playwright.sync_api import sync_playwright

    _, run, _ = small_run
    page_uri = Path(run, "reports", "report.html").resolve().as_uri()
    errors: list[str] = []
    with sync_playwright() as pw:
        # A closed network: no background requests, no sandbox as root.
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.goto(page_uri)
            page.wait_for_load_state("load")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])")
            headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
            tables = page.eval_on_selector_all("table", "els => els.map(e => e.rows.length)")
        finally:
            browser.close()
    assert errors == []
    assert len(images) >= 3 and all(done and w > 0 and h > 0 for done, w, h in images), images
    assert len(tables) >= 3 and all(rows > 1 for rows in tables), tables
    assert headings, "the report has sections"


# --------------------------------------------------------------------------- a worldwide run: the Languages section

WW_CONCEPTS = {"canine": ["dog", "Hund", "狗"], "feline": ["cat", "Katze", "猫", "แมว"], "bird": ["bird"], "home": ["house", "房子"]}
# The Languages table of tests/test_worldwide_export.py's run with WW_CONCEPTS, worked out by hand
# from its tables: most texts first; head share = matches in entries with count >= t / matches;
# coverage = concepts with a synonym matched in the language's list, of those with one in it.
WW_LANGUAGES = [
    ["en", "6", "8", "4", "3", "3", "37.5%", "1", "62.5%", "4", "dog (5), house (2), cat (1)", "cat (1), house (2), dog (5)", "3 of 4"],
    ["de", "4", "5", "3", "3", "1", "0.0%", "3", "100.0%", "3", "Hund (2), Katze (2), Haus (1)", "Haus (1), Hund (2), Katze (2)", "2 of 2"],
    ["zh", "3", "4", "3", "2", "2", "0.0%", "2", "100.0%", "1", "狗 (2), 猫 (2)", "狗 (2), 猫 (2)", "2 of 3"],
    ["th", "0", "0", "1", "0", "-", "-", "0", "-", "0", "-", "-", "0 of 1"],
]


def _ww_expected_from_tables(run: Path) -> dict[str, dict]:
    """The per-language figures by their definition, from the run's own tables and stats (not from report.py)."""
    counts = pd.read_parquet(run / "count" / "data")
    count_stats = json.loads((run / "count" / "stats.json").read_text())
    bal = json.loads((run / "balance" / "stats.json").read_text())
    kept = pd.read_parquet(run / "balance" / "data")["metadata_language"].value_counts()
    out = {}
    for lang, part in counts.groupby("language"):
        t = bal["t_by_language"][lang]
        matches = int(part["count"].sum())
        listed = dict(zip(part["entry"], part["count"], strict=True))
        in_list = [c for c, syns in WW_CONCEPTS.items() if any(s in listed for s in syns)]
        out[lang] = {
            "texts": count_stats["languages"][lang]["texts"], "matches": matches, "entries": len(part),
            "entries matched": int((part["count"] > 0).sum()), "t": t, "tail share": bal["tail_share_by_language"][lang],
            "head entries": bal["head_entries_by_language"][lang],
            "head share": None if t is None or matches == 0 else part.loc[part["count"] >= t, "count"].sum() / matches,
            "kept": int(kept.get(lang, 0)),
            "covered": (sum(any(listed.get(s, 0) > 0 for s in WW_CONCEPTS[c]) for c in in_list), len(in_list)),
        }
    return out


@pytest.fixture(scope="module")
def worldwide_report(spark, tmp_path_factory):
    from tests.test_worldwide_export import build_run

    root = tmp_path_factory.mktemp("ww-report")
    run = build_run(root)
    (root / "concepts.json").write_text(json.dumps(WW_CONCEPTS, ensure_ascii=False))
    result = report(spark, str(run), concepts=str(root / "concepts.json"))
    return run, result


def test_language_table_from_stats_and_counts():
    from pipeline.stages.report import language_cells, language_table

    counts = pd.DataFrame({
        "language": ["ar", "ar", "ar", "hi", "hi"],
        "entry": ["قط", "كلب", "بيت", "बिल्ली", "कुत्ता"],
        "count": [10, 4, 0, 0, 0],
    })
    count_stats = {"languages": {"ar": {"texts": 12, "matches": 14}, "hi": {"texts": 1, "matches": 0}}}
    bal = {"t_by_language": {"ar": 5.0, "hi": None}, "tail_share_by_language": {"ar": 4 / 14, "hi": 0.0},
           "head_entries_by_language": {"ar": 1, "hi": 0}}
    table = language_table(counts, count_stats, bal, kept={"ar": 7}, synonyms={"cat": ["cat", "قط"], "dog": ["dog"]})
    assert language_cells(table) == [
        ["ar", "12", "14", "3", "2", "5", "28.6%", "1", "71.4%", "7", "قط (10), كلب (4)", "كلب (4), قط (10)", "1 of 1"],
        # no concept has a Hindi synonym: coverage is '-'; a language without t has no head share
        ["hi", "1", "0", "2", "0", "-", "0.0%", "0", "-", "0", "-", "-", "-"],
    ]
    assert table.loc[0, "head_share"] == pytest.approx(10 / 14)
    # without balance, kept texts or a concept list: dashes, not zeros
    bare = language_cells(language_table(counts, {}, {}))
    assert bare[0] == ["ar", "-", "14", "3", "2", "-", "-", "-", "-", "-", "قط (10), كلب (4)", "كلب (4), قط (10)", "-"]


def test_single_list_report_has_no_languages_section(small_run):
    root, _, result = small_run
    page = (root / "run" / "reports" / "report.html").read_text()
    assert "<h2>Languages</h2>" not in page and 'class="languages"' not in page
    assert not (root / "run" / "reports" / "languages.parquet").exists()


def test_worldwide_report_writes_the_languages_table_and_file(worldwide_report):
    run, result = worldwide_report
    assert result["languages"] == 4
    page = (run / "reports" / "report.html").read_text()
    assert _table(page, "languages") == [[html.escape(c) for c in row] for row in WW_LANGUAGES]
    assert "The reference language en takes t = 3; its tail share p = 37.5% sets every other language" in page
    langs = pd.read_parquet(run / "reports" / "languages.parquet")
    assert langs["language"].tolist() == ["en", "de", "zh", "th"]
    assert langs.loc[0, "top"].tolist() == ["dog", "house", "cat"] and langs.loc[0, "head_share"] == pytest.approx(5 / 8)
    card = (run / "reports" / "datacard.md").read_text()
    assert "## Languages" in card
    assert "| en | 6 | 8 | 4 | 3 | 3 | 37.5% | 1 | 62.5% | 4 | dog (5), house (2), cat (1) | cat (1), house (2), dog (5) | 3 of 4 |" in card


def _open_in_chromium(path: Path, script: str):
    """Open a page in headless chromium on a closed network; (console errors, the script's result)."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.goto(path.resolve().as_uri())
            page.wait_for_load_state("load")
            got = page.evaluate(script)
        finally:
            browser.close()
    return errors, got


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh installs it)")
def test_worldwide_report_shows_the_per_language_table_in_chromium(worldwide_report):
    """The browser shows one row per metadata language with the figures their definitions give over the run's tables."""
    run, _ = worldwide_report
    errors, (headings, rows) = _open_in_chromium(
        run / "reports" / "report.html",
        "[Array.from(document.querySelectorAll('h2')).map(e => e.textContent),"
        " Array.from(document.querySelectorAll('table.languages tr')).map(r => Array.from(r.cells).map(c => c.textContent))]",
    )
    assert errors == []
    assert "Languages" in headings
    header, body = rows[0], rows[1:]
    assert header[:3] == ["language", "texts", "matches"] and header[-1] == "downstream concepts covered"
    assert body == WW_LANGUAGES
    # The same figures from their definitions over the run's tables (the hand-written rows above can be wrong too).
    expected = _ww_expected_from_tables(run)
    assert [r[0] for r in body] == sorted(expected, key=lambda lang: (-expected[lang]["texts"], lang))
    for row in body:
        want = expected[row[0]]
        cell = dict(zip(header, row, strict=True))
        for name in ("texts", "matches", "entries", "entries matched", "head entries"):
            assert int(cell[name].replace(",", "")) == want[name], (row[0], name)
        assert int(cell["kept after balance"]) == want["kept"]
        assert cell["t"] == ("-" if want["t"] is None else f"{int(want['t'])}")
        for name, key in (("tail share", "tail share"), ("head share of matches", "head share")):
            assert cell[name] == ("-" if want[key] is None else f"{want[key]:.1%}"), (row[0], name)
        assert cell["downstream concepts covered"] == "{} of {}".format(*want["covered"])
