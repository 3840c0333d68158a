"""Concept-frequency reports for a run: long-tail statistics, plots, one static HTML page and a data card."""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import UserError
from pipeline.core.protocol import Context, Output, Plan, Stage

log = logging.getLogger(__name__)

# Buckets by the cumulative share of matches *before* a concept (concepts in rank order):
# head = the fewest top concepts that together hold at least HEAD_SHARE of all matches,
# torso = the following ones up to TORSO_SHARE, tail = the rest (zero-count concepts included).
HEAD_SHARE = 0.5
TORSO_SHARE = 0.9

# Steps whose per-concept counts the report follows, in pipeline order: (step, stage folder,
# a ledger reason). A step's texts are its stage's kept rows, or, with a reason, the rows
# that entered the stage minus those dropped for that reason: "deduplicated" is the prune
# stage's input less its semantic duplicates, before density pruning and capping.
STEPS = (
    ("matched", "match", None),
    ("balanced", "balance", None),
    ("downloaded", "download", None),
    ("embedded", "embed", None),
    ("filtered", "filter", None),
    ("deduplicated", "prune", "semantic_duplicate"),
    ("pruned", "prune", None),
)
RAREST_LISTED = 25


class ReportError(UserError):
    """A report input is unusable: an accuracy file that is not {concept: number}, or one that joins nothing."""


# --------------------------------------------------------------------------- kernels (Spark-free)


def _as_counts(counts: pd.Series | Mapping[str, int]) -> pd.Series:
    s = pd.Series(counts, dtype="float64") if not isinstance(counts, pd.Series) else counts.astype("float64")
    if (s < 0).any() or s.isna().any():
        raise ReportError("counts must be non-negative numbers")
    return s


def frequency_table(counts: pd.Series | Mapping[str, int]) -> pd.DataFrame:
    """concept, count, rank, share, cumulative_share, bucket for per-concept counts indexed by concept.

    rank 1 is the most frequent; ties are broken by concept name so the order is deterministic.
    share = count / total matches; cumulative_share includes the concept itself; the bucket
    rule is in HEAD_SHARE / TORSO_SHARE above. With no matches at all every share is 0 and
    every concept is 'tail'.
    """
    s = _as_counts(counts)
    df = pd.DataFrame({"concept": s.index.astype(str), "count": s.to_numpy().astype(np.int64)})
    df = df.sort_values(["count", "concept"], ascending=[False, True], kind="mergesort").reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1, dtype=np.int64)
    total = float(df["count"].sum())
    df["share"] = df["count"] / total if total > 0 else 0.0
    df["cumulative_share"] = df["share"].cumsum()
    before = df["cumulative_share"] - df["share"]
    # A small tolerance so that float round-off does not move a concept across a boundary.
    eps = 1e-12
    bucket = np.where(before < HEAD_SHARE - eps, "head", np.where(before < TORSO_SHARE - eps, "torso", "tail"))
    df["bucket"] = np.where(df["count"] > 0, bucket, "tail") if total > 0 else "tail"
    return df[["concept", "count", "rank", "share", "cumulative_share", "bucket"]]


def gini(counts: np.ndarray) -> float | None:
    """Gini coefficient of non-negative counts (0 = all equal, (n-1)/n = all mass on one concept)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total <= 0:
        return None
    i = np.arange(1, n + 1)
    return float(2.0 * (i * x).sum() / (n * total) - (n + 1) / n)


def normalised_entropy(counts: np.ndarray) -> float | None:
    """Shannon entropy of the match distribution over all n concepts divided by log(n): 1 = uniform."""
    x = np.asarray(counts, dtype=np.float64)
    n, total = len(x), x.sum()
    if n < 2 or total <= 0:
        return None
    p = x[x > 0] / total
    return float(-(p * np.log(p)).sum() / math.log(n))


def zipf_exponent(counts: np.ndarray) -> tuple[float | None, float | None]:
    """(s, r^2) of the least-squares fit log(count) = c - s * log(rank) over the non-zero counts.

    For an exact power law count = C / rank^s it returns s. Zero counts are left out because
    their log is undefined; fewer than two distinct ranks give (None, None).
    """
    x = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    x = x[x > 0]
    if len(x) < 2:
        return None, None
    lr, lc = np.log(np.arange(1, len(x) + 1)), np.log(x)
    slope, _ = np.polyfit(lr, lc, 1)
    r = np.corrcoef(lr, lc)[0, 1] if lc.std() > 0 else 0.0
    return float(-slope), float(r * r)


def long_tail_stats(counts: pd.Series | Mapping[str, int], t: float | None = None) -> dict[str, Any]:
    """Long-tail summary of per-concept counts.

    concepts with zero / < 10 / < 100 / < t texts; the share of all matches held by the top 1%
    of concepts (at least one concept); the Gini coefficient and normalised entropy over all
    concepts (zeros included); the Zipf exponent (see `zipf_exponent`); concepts per bucket.
    """
    s = _as_counts(counts)
    x = s.to_numpy()
    total = float(x.sum())
    k = max(1, math.ceil(0.01 * len(x))) if len(x) else 0
    top = float(np.sort(x)[::-1][:k].sum() / total) if total > 0 else None
    s_exp, r2 = zipf_exponent(x)
    table = frequency_table(s)
    out: dict[str, Any] = {
        "concepts": int(len(x)),
        "concepts_nonzero": int((x > 0).sum()),
        "total_matches": int(total),
        "zero": int((x == 0).sum()),
        "lt_10": int((x < 10).sum()),
        "lt_100": int((x < 100).sum()),
        "t": t,
        "lt_t": int((x < t).sum()) if t is not None else None,
        "top1pct_concepts": int(k),
        "top1pct_share": top,
        "gini": gini(x),
        "normalised_entropy": normalised_entropy(x),
        "zipf_exponent": s_exp,
        "zipf_fit_r2": r2,
        "buckets": {b: int((table["bucket"] == b).sum()) for b in ("head", "torso", "tail")},
    }
    return out


def accuracy_fit(freq: pd.Series | Mapping[str, float], acc: pd.Series | Mapping[str, float]) -> dict[str, Any]:
    """Least-squares fit acc = slope * log10(freq) + intercept and Pearson r, over concepts with freq > 0.

    As in "No Zero-Shot Without Exponential Data" (Udandarao et al. 2024): accuracy grows
    linearly in log frequency. `freq` and `acc` are keyed by concept; concepts missing from
    either side or with freq == 0 are counted, not fitted. Fewer than 3 usable concepts give
    None for the fitted values.
    """
    f = pd.Series(freq, dtype="float64") if not isinstance(freq, pd.Series) else freq.astype("float64")
    a = pd.Series(acc, dtype="float64") if not isinstance(acc, pd.Series) else acc.astype("float64")
    joined = pd.concat([f.rename("freq"), a.rename("acc")], axis=1, join="inner").dropna()
    use = joined[joined["freq"] > 0]
    out: dict[str, Any] = {
        "n": int(len(use)),
        "n_zero_frequency": int((joined["freq"] <= 0).sum()),
        "n_accuracy_without_frequency": int(len(a.index.difference(f.index))),
        "n_frequency_without_accuracy": int(len(f.index.difference(a.index))),
        "slope": None,
        "intercept": None,
        "pearson_r": None,
    }
    if len(use) < 3:
        return out
    lx, y = np.log10(use["freq"].to_numpy()), use["acc"].to_numpy()
    if lx.std() == 0:
        return out
    slope, intercept = np.polyfit(lx, y, 1)
    out.update(
        slope=float(slope),
        intercept=float(intercept),
        pearson_r=float(np.corrcoef(lx, y)[0, 1]) if y.std() > 0 else 0.0,
    )
    return out


def never_matched(counts: pd.Series | Mapping[str, int]) -> list[str]:
    """The entries (or concepts) with no text, in the given order (the metadata's)."""
    s = _as_counts(counts)
    return [str(k) for k, v in s.items() if v == 0]


def rarest(table: pd.DataFrame, k: int = RAREST_LISTED) -> pd.DataFrame:
    """The k rarest rows of a `frequency_table` that occur (count > 0), rarest first, ties by name.

    Zero counts are left out: on a MetaCLIP list most entries never match, and a page of
    zeros hides the rare concepts that are there; the report gives their number instead.
    """
    nz = table[table["count"] > 0]
    return nz.sort_values(["count", "concept"], kind="mergesort").head(k).reset_index(drop=True)


def band_counts(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Concepts per count band ('0', '1-9', '10-99', ...; see `count_bins`): a row per band, a column per step."""
    top = max((int(t["count"].max()) for t in tables.values() if len(t)), default=0)
    edges, labels = count_bins(top)
    cols = {}
    for step, table in tables.items():
        c = table["count"].to_numpy()
        cols[step] = [int((c == 0).sum())] + [int(((c >= a) & (c < b)).sum()) for a, b in zip(edges[1:-1], edges[2:], strict=True)]
    return pd.DataFrame(cols, index=pd.Index(labels, name="band"), dtype=np.int64)


def funnel_table(stats: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """stage, rows_in, outcome, rows, share: every row stage (stats with `rows_in`) in the order of `stats`.

    Per stage its kept rows come first, then each drop reason, most rows first (ties by
    name); share = rows / rows_in of that stage (0 for a stage that saw no rows).
    """
    out = []
    for stage, st in stats.items():
        if "rows_in" not in st:
            continue
        n = int(st["rows_in"])
        drops = sorted(((str(r), int(c)) for r, c in (st.get("dropped") or {}).items()), key=lambda rc: (-rc[1], rc[0]))
        for outcome, rows in [("kept", int(st.get("kept") or 0)), *drops]:
            out.append((stage, n, outcome, rows, rows / n if n else 0.0))
    return pd.DataFrame(out, columns=["stage", "rows_in", "outcome", "rows", "share"]).astype(
        {"rows_in": np.int64, "rows": np.int64, "share": np.float64}
    )


def export_summary(run_root: str, stats: Mapping[str, Mapping[str, Any]]) -> dict[str, str] | None:
    """What the export stage handed over, from its stats.json, as {label: text}; None when it did not run."""
    st = stats.get("export")
    if st is None:
        return None
    where = f"{run_root}/export"
    uid_list = st.get("uid_list")
    out = {
        "samples": _count(st.get("kept")),
        "subset (Parquet)": f"{where}/data",
        "uid list": f"{where}/{uid_list}" if uid_list else "not written",
    }
    if st.get("uid_list_reason"):
        out["uid list"] += f" ({st['uid_list_reason']})"
    shards = st.get("shards")
    if not isinstance(shards, Mapping):
        out["shards"] = "not written (export ran without shards)"
        return out
    count, size = shards.get("count"), shards.get("bytes")
    out["shards"] = _count(count)
    if isinstance(count, int) and count > 0:
        out["shard files"] = f"{where}/shards/00000.tar ... {count - 1:05d}.tar, samples per shard in shards/sizes.json"
    out["samples in shards"] = _count(shards.get("total"))
    out["samples per shard"] = _count(shards.get("samples_per_shard"))
    out["image format"] = str(shards.get("image_format", "-"))
    out["shard bytes"] = _bytes(size)
    if isinstance(size, int) and isinstance(count, int) and count > 0:
        out["mean bytes per shard"] = _bytes(round(size / count))
    return out


LANGUAGE_LISTED = 5  # top and rarest entries named per language


def language_table(
    counts: pd.DataFrame,
    count_stats: Mapping[str, Any],
    balance_stats: Mapping[str, Any],
    kept: Mapping[str, int] | None = None,
    synonyms: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """One row per metadata language of a worldwide run, most texts first (ties by code).

    `counts`: count/data's `language, entry, count` (every entry, zeros too). texts comes from
    count/stats.json, t, tail share (matches in entries with count < t over all its matches) and
    head entries (count >= t) from balance/stats.json, `kept` is texts per language after
    balancing. matches = the sum of the language's counts; head_share = its matches in entries
    with count >= t over all of them. top / rarest: the most frequent and the rarest entries that
    occur (ties by name). With `synonyms` ({concept: [synonyms]}): concepts_in_list = concepts
    with a synonym that is an entry of the language's list, concepts_covered = those with such
    a synonym of count > 0.
    """
    per_lang_stats = count_stats.get("languages") or {}
    t_by = balance_stats.get("t_by_language") or {}
    tail_by = balance_stats.get("tail_share_by_language") or {}
    head_by = balance_stats.get("head_entries_by_language") or {}
    rows = []
    for lang, part in counts.groupby("language", sort=True):
        c = part["count"].to_numpy(np.int64)
        matches = int(c.sum())
        t = t_by.get(lang)
        occur = part[part["count"] > 0]
        top = occur.sort_values(["count", "entry"], ascending=[False, True], kind="mergesort").head(LANGUAGE_LISTED)
        low = occur.sort_values(["count", "entry"], kind="mergesort").head(LANGUAGE_LISTED)
        in_list = covered = None
        if synonyms is not None:
            listed = dict(zip(part["entry"], part["count"], strict=True))
            in_list = sum(any(s in listed for s in syns) for syns in synonyms.values())
            covered = sum(any(listed.get(s, 0) > 0 for s in syns) for syns in synonyms.values())
        texts = (per_lang_stats.get(lang) or {}).get("texts")
        rows.append({
            "language": str(lang),
            "texts": texts,
            "matches": matches,
            "entries": int(len(c)),
            "entries_matched": int((c > 0).sum()),
            "t": None if t is None else float(t),
            "tail_share": tail_by.get(lang),
            "head_entries": head_by.get(lang),
            "head_share": float(c[c >= t].sum() / matches) if t is not None and matches > 0 else None,
            "kept_after_balance": None if kept is None else int(kept.get(lang, 0)),
            "top": [(str(e), int(n)) for e, n in zip(top["entry"], top["count"], strict=True)],
            "rarest": [(str(e), int(n)) for e, n in zip(low["entry"], low["count"], strict=True)],
            "concepts_in_list": in_list,
            "concepts_covered": covered,
        })
    rows.sort(key=lambda r: (-(r["texts"] if r["texts"] is not None else -1), r["language"]))
    # object columns: a missing figure stays None (not NaN), a count stays an int
    return pd.DataFrame(rows, dtype=object, columns=[
        "language", "texts", "matches", "entries", "entries_matched", "t", "tail_share", "head_entries", "head_share",
        "kept_after_balance", "top", "rarest", "concepts_in_list", "concepts_covered",
    ])


def _share(p: float | None) -> str:
    """A share to one decimal, never rounded onto 0% or 100% when it is not exactly that."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    if 0 < p < 0.0005:
        return "<0.1%"
    if 0.9995 <= p < 1:
        return ">99.9%"
    return f"{p:.1%}"


def _percent(rows: int, total: int) -> str:
    """rows / total to one decimal, never rounded onto 0% or 100% when it is not exactly that."""
    if total <= 0:
        return "-"
    p = rows / total
    if 0 < p < 0.0005:
        return "<0.1%"
    if 0.9995 <= p < 1:
        return ">99.9%"
    return f"{p:.1%}"


def _count(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) and not isinstance(n, bool) else _fmt(n)


def _bytes(n: Any) -> str:
    """12,345,678 bytes (11.8 MiB): exact, and readable."""
    if not isinstance(n, int) or isinstance(n, bool):
        return _fmt(n)
    size, unit = float(n), "bytes"
    for u in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, u
    return f"{n:,} bytes" if unit == "bytes" else f"{n:,} bytes ({size:.1f} {unit})"


def load_accuracy(path: str, text: str) -> pd.Series:
    """{concept: accuracy}; the frequency_determines_performance layout {"classwise": {...}} is accepted too."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict) and isinstance(data.get("classwise"), dict):
        data = data["classwise"]
    if not isinstance(data, dict) or not data:
        raise ReportError(f"{path}: expected a non-empty JSON object {{concept: accuracy}}")
    bad = [k for k, v in data.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise ReportError(f"{path}: accuracies must be numbers; not for {bad[:5]}")
    return pd.Series(data, dtype="float64")


# --------------------------------------------------------------------------- plots (matplotlib, Agg)


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("the report's plots need matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def plot_rank_frequency(tables: Mapping[str, pd.DataFrame], t: float | None = None) -> bytes:
    """Rank-frequency curves on log-log axes, one per step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    drawn = False
    for step, table in tables.items():
        nz = table[table["count"] > 0]
        if len(nz):
            ax.plot(nz["rank"], nz["count"], marker=".", markersize=3, linewidth=1, label=f"{step} ({len(nz)} non-zero)")
            drawn = True
    if drawn:
        ax.set_xscale("log")
        ax.set_yscale("log")
        if t is not None and t > 0:
            ax.axhline(t, color="grey", linestyle="--", linewidth=0.8, label=f"t = {t:g}")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no matches", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("rank")
    ax.set_ylabel("texts")
    ax.set_title("Rank-frequency")
    return _png(fig)


def count_bins(max_count: int) -> tuple[list[float], list[str]]:
    """Bin edges 0, 1, 10, 100, ... and labels '0', '1-9', '10-99', ... covering max_count."""
    edges: list[float] = [0, 1]
    while edges[-1] <= max_count:
        edges.append(edges[-1] * 10)
    labels = ["0"] + [f"{int(a):,}-{int(b) - 1:,}" for a, b in zip(edges[1:-1], edges[2:], strict=True)]
    return edges, labels


def tail_histogram_figure(tables: Mapping[str, pd.DataFrame]):
    """Concepts per count band (0, 1-9, 10-99, ...), one bar group per step, on a log axis.

    On a MetaCLIP list the zero band holds most entries (148,309 of 148,730 in the demo), so
    on a linear axis every other band is a flat line; on a log axis each band is visible and
    every bar carries its count.
    """
    plt = _pyplot()
    bands = band_counts(tables)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    width = 0.8 / max(1, len(bands.columns))
    pos = np.arange(len(bands))
    for k, step in enumerate(bands.columns):
        values = bands[step].to_numpy()
        bars = ax.bar(pos + k * width, values, width=width, label=step)
        ax.bar_label(bars, labels=[f"{v:,}" if v else "" for v in values], fontsize=6, rotation=90, padding=2)
    ax.set_yscale("log")
    # Bottom below 1 so that a band of one concept is a visible bar; headroom for the labels.
    ax.set_ylim(0.5, max(1, int(bands.to_numpy().max(initial=0))) * 30)
    ax.set_xticks(pos + width * (len(bands.columns) - 1) / 2, list(bands.index), rotation=30, fontsize=8)
    ax.set_xlabel("texts per concept")
    ax.set_ylabel("concepts (log scale)")
    ax.set_title("Concepts per frequency band")
    ax.legend(fontsize=8, loc="upper right")
    return fig


def plot_tail_histogram(tables: Mapping[str, pd.DataFrame]) -> bytes:
    """The band chart of `tail_histogram_figure` as PNG bytes."""
    return _png(tail_histogram_figure(tables))


KEPT_COLOUR = "#2ca02c"


def funnel_figure(funnel: pd.DataFrame):
    """One horizontal bar per row stage, top to bottom in pipeline order: kept, then each drop reason, stacked."""
    plt = _pyplot()
    stages = list(dict.fromkeys(funnel["stage"]))
    fig, ax = plt.subplots(figsize=(7.5, 1.4 + 0.45 * max(1, len(stages))))
    if not stages:
        ax.text(0.5, 0.5, "no stage decided rows", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    # Green for kept; the drop reasons take tab20's other colours, the same colour for a reason in every stage.
    palette = [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i not in (4, 5)]
    reasons = list(dict.fromkeys(o for o in funnel["outcome"] if o != "kept"))
    colour = {"kept": KEPT_COLOUR, **{r: palette[i % len(palette)] for i, r in enumerate(reasons)}}
    top = max(1, int(funnel.groupby("stage")["rows_in"].first().max()), int(funnel.groupby("stage")["rows"].sum().max()))
    legend: set[str] = set()
    for y, stage in enumerate(stages):
        part = funnel[funnel["stage"] == stage]
        left = 0
        for outcome, n in zip(part["outcome"], part["rows"], strict=True):
            ax.barh(y, n, left=left, height=0.7, color=colour[outcome], edgecolor="white", linewidth=0.5,
                    label=outcome if outcome not in legend else "_nolegend_")
            legend.add(outcome)
            if n >= 0.08 * top:  # a count inside the segment where it fits; the table has all of them
                ax.text(left + n / 2, y, f"{n:,}", ha="center", va="center", fontsize=7)
            left += int(n)
        kept = part[part["outcome"] == "kept"].iloc[0]
        ax.text(left + 0.01 * top, y, f"{int(kept['rows']):,} of {int(kept['rows_in']):,} kept "
                f"({_percent(int(kept['rows']), int(kept['rows_in']))})", va="center", fontsize=8)
    ax.set_yticks(range(len(stages)), stages)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.45)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{int(v):,}"))
    ax.set_xlabel("rows")
    ax.set_title("Rows kept and dropped, per stage")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def plot_funnel(funnel: pd.DataFrame) -> bytes:
    """The funnel chart of `funnel_figure` as PNG bytes."""
    return _png(funnel_figure(funnel))


def plot_accuracy(freq: pd.Series, acc: pd.Series, fit: Mapping[str, Any]) -> bytes:
    """Accuracy against log10(frequency) with the fitted line."""
    plt = _pyplot()
    joined = pd.concat([freq.rename("freq"), acc.rename("acc")], axis=1, join="inner").dropna()
    joined = joined[joined["freq"] > 0]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    lx = np.log10(joined["freq"].to_numpy())
    ax.scatter(lx, joined["acc"], s=8, alpha=0.6)
    if fit.get("slope") is not None and len(lx):
        xs = np.linspace(lx.min(), lx.max(), 50)
        ax.plot(xs, fit["slope"] * xs + fit["intercept"], color="C3",
                label=f"slope {fit['slope']:.3g}, r = {fit['pearson_r']:.3f}, n = {fit['n']}")
        ax.legend(fontsize=8)
    ax.set_xlabel("log10(texts with the concept)")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy vs log-frequency")
    return _png(fig)


# --------------------------------------------------------------------------- Spark side


def _counts_frame(rows: pd.DataFrame, entries: list[str]) -> pd.Series:
    counts = np.zeros(len(entries), np.int64)
    if len(rows):
        counts[rows.iloc[:, 0].to_numpy()] = rows.iloc[:, 1].to_numpy()
    # Entries are unique in a metadata list; group defensively so a duplicate cannot break the index.
    return pd.Series(counts, index=pd.Index(entries, name="concept")).groupby(level=0, sort=False).sum()


def step_frames(run) -> dict[str, Any]:
    """For each step present, its texts as a frame with `uid, text, entry_ids`.

    Stages after balancing carry uids, not always texts: their uids are joined back to the
    match output. "deduplicated" appears only when the prune stage ran SemDeDup.
    """
    from pyspark.sql import functions as F

    from pipeline.core.ledger import read_ledger

    spark = run.spark
    matched = spark.read.parquet(run.data_dir("match")).select("uid", "text", "entry_ids")
    out: dict[str, Any] = {}
    for step, stage, minus in STEPS:
        if not run.is_complete(stage):
            continue
        if stage in ("match", "balance"):
            out[step] = spark.read.parquet(run.data_dir(stage)).select("uid", "text", "entry_ids")
            continue
        if minus is not None:
            if run.stats(stage).get("dedup_eps") is None:
                continue
            ledger = read_ledger(spark, run.root, [stage])
            uids = ledger.where(~((F.col("decision") == "dropped") & (F.col("reason") == minus))).select("uid")
        else:
            uids = spark.read.parquet(run.data_dir(stage)).select("uid")
        out[step] = matched.join(uids, on="uid", how="left_semi")
    return out


def step_counts(run, entries: list[str]) -> dict[str, pd.Series]:
    """Per-entry text counts for each step present (matched from count/data when there)."""
    from pipeline.stages.count import count_entries

    out: dict[str, pd.Series] = {}
    for step, df in step_frames(run).items():
        if step == "matched" and run.is_complete("count") and run.fs.exists(run.data_dir("count")):
            rows = run.spark.read.parquet(run.data_dir("count")).select("entry_id", "count").toPandas()
        else:
            rows = count_entries(df, len(entries)).toPandas()
        out[step] = _counts_frame(rows, entries)
    return out


def concept_coverage(run, concepts_file: str | None) -> pd.DataFrame | None:
    """Downstream concepts per step: step, concept, count, most_common_synonym, most_common_synonym_count.

    With a {concept: [synonyms]} file the texts of every step are counted through the
    synonyms ("The Neglected Tails of Vision-Language Models": the most frequent synonym is
    the one to prompt with); without one, the count stage's own concepts table is used.
    """
    if concepts_file is None:
        if not run.fs.exists(f"{run.stage_dir('count')}/concepts"):
            return None
        df = run.spark.read.parquet(f"{run.stage_dir('count')}/concepts").toPandas()
        df.insert(0, "step", "matched")
        return df[["step", "concept", "count", "most_common_synonym", "most_common_synonym_count"]]
    from pipeline.concepts.metadata import load_concepts
    from pipeline.stages.count import count_concepts

    concepts = load_concepts(concepts_file)
    if not concepts.synonyms:
        raise ReportError(f"--concepts {concepts_file}: expected a {{concept: [synonym, ...]}} JSON object")
    match_stats = run.stats("match")
    names, entries = list(concepts.synonyms), list(concepts.entries)
    frames = []
    for step, df in step_frames(run).items():
        by_c, by_s = count_concepts(
            df, entries, concepts.synonyms, match_stats.get("match_mode", "metaclip"), match_stats.get("backend", "ahocorasick_rs")
        )
        c_counts = _counts_frame(by_c.select("concept_id", "count").toPandas(), names)
        s_counts = _counts_frame(by_s.select("synonym_id", "count").toPandas(), entries)
        for name in names:
            syn = sorted(concepts.synonyms[name], key=lambda s: (-int(s_counts[s]), s))[0]
            frames.append((step, name, int(c_counts[name]), syn, int(s_counts[syn])))
    return pd.DataFrame(frames, columns=["step", "concept", "count", "most_common_synonym", "most_common_synonym_count"])


def language_section(run, concepts_file: str | None) -> pd.DataFrame | None:
    """`language_table` for a run whose count/data has a non-null `language` (per-language metadata); else None.

    Texts kept per language: balance/stats.json's kept_by_language. Synonyms: the concept
    file, else the count stage's count/synonyms table.
    """
    from pyspark.sql import functions as F

    if not run.is_complete("count") or not run.fs.exists(run.data_dir("count")):
        return None
    table = run.spark.read.parquet(run.data_dir("count"))
    if "language" not in table.columns:
        return None
    counts = table.where(F.col("language").isNotNull()).select("language", "entry", "count").toPandas()
    if counts.empty:
        return None
    bal = run.stats("balance") if run.is_complete("balance") else {}
    synonyms = None
    if concepts_file is not None:
        from pipeline.concepts.metadata import load_concepts

        synonyms = load_concepts(concepts_file).synonyms
    elif run.fs.exists(f"{run.stage_dir('count')}/synonyms"):
        pairs = run.spark.read.parquet(f"{run.stage_dir('count')}/synonyms").select("concept_id", "concept", "synonym").toPandas()
        synonyms = {c: list(g["synonym"]) for (_, c), g in pairs.sort_values(["concept_id", "synonym"]).groupby(["concept_id", "concept"], sort=True)}
    return language_table(counts, run.stats("count"), bal, bal.get("kept_by_language"), synonyms)


def _stage_stats(run, order: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Every stage's stats.json in pipeline order (`order`), then any other stage folders'."""
    names = [s for s in order if s != "report" and run.fs.exists(f"{run.stage_dir(s)}/stats.json")]
    extra = [
        s for s in run.fs.list(run.root)
        if s not in names and not s.startswith(("_", ".")) and s not in ("reports", "decisions")
        and run.fs.exists(f"{run.stage_dir(s)}/stats.json")
    ]
    return {s: run.stats(s) for s in names + extra}


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(_clean(obj), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _lines(names: list[str]) -> bytes:
    """One name a line: the text list that `load_concepts` reads back (MetaCLIP's entries are single lines)."""
    return "".join(f"{n}\n" for n in names).encode()


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


@dataclass(frozen=True)
class ReportConfig:
    # A {concept: [synonym, ...]} JSON: downstream coverage at every step (default: count.concepts).
    concepts: str | None = None
    # A {concept: accuracy} JSON to fit against log10 frequency.
    accuracy: str | None = None

    def validate(self, where: str) -> None:
        pass


def _read_inputs(run, accuracy_file: str | None) -> tuple[list[str], pd.Series | None]:
    """The match stage's entries and the accuracy file, or a clear error before anything is written."""
    meta = f"{run.stage_dir('match')}/metadata.json"
    if not run.is_complete("match") or not run.fs.exists(meta):
        raise FileNotFoundError(f"{run.root}: no complete match stage (match/metadata.json); run `curate match` and `curate count` first")
    entries = [str(e) for e in run.fs.read_json(meta)]
    acc = load_accuracy(accuracy_file, run.fs.read_bytes(accuracy_file).decode("utf-8")) if accuracy_file else None
    return entries, acc


def plan(ctx: Context) -> Plan:
    """The report reads the whole run: every complete stage's marker is part of its fingerprint."""
    run = ctx.run
    _read_inputs(run, ctx.cfg.accuracy)  # a missing match stage or a bad accuracy file fails here, before any write
    made = {name: run.marker(name) for name in run.fs.list(run.root) if not name.startswith(("_", ".")) and name != "reports"}
    concepts = ctx.cfg.concepts or ctx.pipeline.count.concepts
    files = {"concepts": concepts, "accuracy": ctx.cfg.accuracy}
    return Plan(fingerprint={
        "stages": {k: v for k, v in sorted(made.items()) if v is not None},
        "files": {k: _file_identity(run, v) for k, v in files.items()},
    })


def _file_identity(run, path: str | None) -> Any:
    if path is None:
        return None
    import hashlib

    return [path, hashlib.sha256(run.fs.read_bytes(path)).hexdigest()] if run.fs.exists(path) else [path, None]


def run(ctx: Context) -> Output:
    """Write `<run>/reports/`: concept_frequency.parquet, long_tail.json, PNG plots,
    [downstream_coverage.parquet, accuracy_fit.json], report.html and datacard.md."""
    summary = write_report(
        ctx.run, ctx.cfg.concepts or ctx.pipeline.count.concepts, ctx.cfg.accuracy, ctx.dir, ctx.pipeline.stage_names
    )
    files = summary.pop("_files")
    return Output(files=files, stats=summary)


def write_report(
    run, concepts_file: str | None, accuracy_file: str | None, out_dir: str, order: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The report's files (under `_files`, written by the stage protocol) and a summary."""
    run_root = run.root
    entries, acc = _read_inputs(run, accuracy_file)
    stats = _stage_stats(run, order)
    t = stats.get("balance", {}).get("t")
    counts = step_counts(run, entries)
    tables = {step: frequency_table(c) for step, c in counts.items()}
    long_tail = {step: long_tail_stats(c, t) for step, c in counts.items()}
    freq = pd.concat([tab.assign(step=step) for step, tab in tables.items()], ignore_index=True)
    freq = freq[["step", "concept", "count", "rank", "share", "cumulative_share", "bucket"]]

    funnel = funnel_table(stats)
    never = never_matched(counts["matched"])

    files: dict[str, bytes] = {
        "concept_frequency.parquet": _parquet_bytes(freq),
        "long_tail.json": _json_bytes(long_tail),
        "funnel.png": plot_funnel(funnel),
        "rank_frequency.png": plot_rank_frequency(tables, t),
        "tail_histogram.png": plot_tail_histogram(tables),
        "never_matched.txt": _lines(never),
    }
    coverage = concept_coverage(run, concepts_file)
    if coverage is not None:
        files["downstream_coverage.parquet"] = _parquet_bytes(coverage)
        files["never_matched_concepts.txt"] = _lines(never_matched(coverage[coverage["step"] == "matched"].set_index("concept")["count"]))
    fit = None
    if acc is not None:
        if coverage is not None:
            source = "downstream concepts (synonym counts, matched pool)"
            f = coverage[coverage["step"] == "matched"].set_index("concept")["count"]
        else:
            source = "metadata entries (matched pool)"
            f = counts["matched"]
        fit = accuracy_fit(f, acc)
        if fit["n"] == 0:
            raise ReportError(
                f"--accuracy {accuracy_file}: none of its {len(acc)} concepts has a non-zero count in the {source}; "
                f"first ones: {list(acc.index[:5])}"
            )
        fit.update(frequency_source=source, accuracy_file=accuracy_file)
        files["accuracy_fit.json"] = _json_bytes(fit)
        files["accuracy_vs_frequency.png"] = plot_accuracy(f, acc, fit)
    languages = language_section(run, concepts_file)
    if languages is not None:
        files["languages.parquet"] = _parquet_bytes(languages.assign(
            top=[[e for e, _ in v] for v in languages["top"]], rarest=[[e for e, _ in v] for v in languages["rarest"]],
        ))
    run_json = run.fs.read_json(f"{run.root}/run.json") if run.fs.exists(f"{run.root}/run.json") else {}
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    export = export_summary(run_root, stats)
    files["report.html"] = render_html(
        run_root, generated, tables, long_tail, coverage, fit, files, stats, funnel, export, languages
    ).encode()
    files["datacard.md"] = render_datacard(
        run_root, generated, run_json, stats, long_tail, coverage, fit, len(never), export, languages
    ).encode()

    log.info("report: %d steps, %d entries -> %s/report.html", len(tables), len(entries), out_dir)
    return {
        "_files": files,
        "reports_dir": out_dir,
        "html": f"{out_dir}/report.html",
        "files": sorted(files),
        "steps": list(tables),
        "never_matched": len(never),
        "languages": None if languages is None else len(languages),
        "long_tail": _clean(long_tail),
        "accuracy_fit": _clean(fit),
    }


# --------------------------------------------------------------------------- rendering

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee} h2{border-bottom:1px solid #ddd;padding-bottom:.2em}
.note{color:#555;font-size:13px}
table.languages td:nth-child(n+11){text-align:left}
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) or "-"
    return str(v)


def _kv_table(rows: Mapping[str, Mapping[str, Any]], cls: str) -> str:
    """A table with one column per key of `rows` (a step or stage) and one row per statistic."""
    keys: list[str] = []
    for r in rows.values():
        keys += [k for k in r if k not in keys]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows)
    body = "".join(
        f"<tr><td>{html.escape(k)}</td>" + "".join(f"<td>{html.escape(_fmt(r.get(k)))}</td>" for r in rows.values()) + "</tr>"
        for k in keys
    )
    return f'<table class="{cls}"><tr><th>statistic</th>{head}</tr>{body}</table>'


def _df_table(df: pd.DataFrame, cls: str) -> str:
    return df.to_html(index=False, classes=cls, border=0, float_format=lambda x: f"{x:.4g}", escape=True)


def _img(files: Mapping[str, bytes], name: str, alt: str) -> str:
    data = base64.b64encode(files[name]).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _funnel_html(funnel: pd.DataFrame) -> str:
    """The funnel as a table: a row per stage and outcome (kept, then each drop reason), as in the chart."""
    head = "<tr><th>stage</th><th>rows in</th><th>outcome</th><th>rows</th><th>share of the stage's input</th></tr>"
    body = "".join(
        f"<tr><td>{html.escape(r.stage)}</td><td>{r.rows_in:,}</td><td>{html.escape(r.outcome)}</td>"
        f"<td>{r.rows:,}</td><td>{_percent(r.rows, r.rows_in)}</td></tr>"
        for r in funnel.itertuples(index=False)
    )
    return f'<table class="funnel">{head}{body}</table>'


def _names(names: list[str], most: int = RAREST_LISTED) -> str:
    shown = ", ".join(html.escape(n) for n in names[:most])
    return shown + (f" and {len(names) - most:,} more" if len(names) > most else "")


def _rarest_html(step: str, table: pd.DataFrame, never: set[str]) -> list[str]:
    """A step's rarest concepts that occur, and its zero counts as one figure (never matched, or lost since)."""
    zero = table.loc[table["count"] == 0, "concept"].tolist()
    lost = sorted(c for c in zero if c not in never)
    link = '<a href="never_matched.txt">never_matched.txt</a>'
    if step == "matched":
        note = f"Entries never matched: {len(zero):,} of {len(table):,}, listed in {link}."
    else:
        note = (f"Entries with no text at this step: {len(zero):,} of {len(table):,} (never matched: "
                f"{len(zero) - len(lost):,}, listed in {link}; lost since matching: {len(lost):,}"
                + (f": {_names(lost)})." if lost else ")."))
    out = [f"<h3>Rarest that occur</h3><p class=\"note\">{note}</p>"]
    shown = rarest(table)
    out.append(_df_table(shown, "frequency") if len(shown) else '<p class="note">No entry has a text at this step.</p>')
    return out


LANGUAGE_HEADERS = (
    "language", "texts", "matches", "entries", "entries matched", "t", "tail share", "head entries",
    "head share of matches", "kept after balance", "top entries", "rarest that occur", "downstream concepts covered",
)


def _t(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{int(v):,}" if float(v).is_integer() else f"{v:.4g}"


def _n(v: int | None) -> str:
    return "-" if v is None else f"{int(v):,}"


def _entries_cell(pairs: list[tuple[str, int]]) -> str:
    return ", ".join(f"{e} ({n:,})" for e, n in pairs) or "-"


def language_cells(table: pd.DataFrame) -> list[list[str]]:
    """The Languages table as text, a row per language, columns as LANGUAGE_HEADERS."""
    out = []
    for r in table.itertuples(index=False):
        covered = "-" if not r.concepts_in_list else f"{r.concepts_covered:,} of {r.concepts_in_list:,}"
        out.append([
            r.language, _n(r.texts), _n(r.matches), _n(r.entries), _n(r.entries_matched), _t(r.t),
            _share(r.tail_share), _n(r.head_entries), _share(r.head_share), _n(r.kept_after_balance),
            _entries_cell(r.top), _entries_cell(r.rarest), covered,
        ])
    return out


def _language_note(table: pd.DataFrame, stats: Mapping[str, Mapping[str, Any]]) -> str:
    """How t was set (from balance/stats.json) and what the coverage column means."""
    bal = stats.get("balance", {})
    parts = [f"{len(table):,} metadata languages; texts are those matched against the language's own list."]
    if bal.get("t_by_language"):
        ref, p = bal.get("reference_language"), bal.get("p")
        if str(bal.get("t_from", "t")).startswith("tail_fraction"):
            parts.append(f"Every language's t is the count whose cumulative share of its matches is nearest to p = {_share(p)} (MetaCLIP 2).")
        else:
            parts.append(f"The reference language {ref} takes t = {_t(bal.get('t'))}; its tail share p = {_share(p)} sets every "
                         "other language's t: the count whose cumulative share of that language's matches is nearest to p (MetaCLIP 2).")
    else:
        parts.append("No complete balance stage with per-language t: t, tail share and head statistics are '-'.")
    parts.append("Head entries: count >= t (sampled down to about t); tail share: matches in entries with count < t.")
    if table["concepts_in_list"].isna().all():
        parts.append("No downstream concept list: no coverage per language.")
    else:
        parts.append("Downstream concepts covered: concepts with a synonym that is, string for string, an entry of the "
                     "language's metadata list and matched there, of those with such a synonym in the list ('-': the "
                     "concept list has no synonym in that language). The concept list is one list, matched over all "
                     "texts as one list; its own counts are not per language.")
    return " ".join(parts)


def _languages_html(table: pd.DataFrame, stats: Mapping[str, Mapping[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in LANGUAGE_HEADERS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in language_cells(table))
    return (f'<h2>Languages</h2><p class="note">{html.escape(_language_note(table, stats))} '
            'Every figure is also in <a href="languages.parquet">languages.parquet</a>.</p>'
            f'<table class="languages"><tr>{head}</tr>{body}</table>')


def _export_html(export: Mapping[str, str]) -> str:
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in export.items())
    return f'<h2>Export</h2><table class="export"><tr><th>item</th><th>value</th></tr>{body}</table>'


def render_html(
    run_root: str,
    generated: str,
    tables: Mapping[str, pd.DataFrame],
    long_tail: Mapping[str, Any],
    coverage: pd.DataFrame | None,
    fit: Mapping[str, Any] | None,
    files: Mapping[str, bytes],
    stats: Mapping[str, Mapping[str, Any]],
    funnel: pd.DataFrame | None = None,
    export: Mapping[str, str] | None = None,
    languages: pd.DataFrame | None = None,
) -> str:
    """One self-contained page: inline CSS, plots as base64 data URIs, no scripts, no external resources.

    The only links are relative ones to the text files beside it in the reports folder.
    """
    funnel = funnel_table(stats) if funnel is None else funnel
    never = set(tables["matched"].loc[tables["matched"]["count"] == 0, "concept"]) if "matched" in tables else set()
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>Curation report: {html.escape(run_root)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Curation report</h1><p class=\"note\">run <code>{html.escape(run_root)}</code>, generated {generated}. "
        f"Buckets: head = the top concepts holding the first {HEAD_SHARE:.0%} of matches, torso = up to "
        f"{TORSO_SHARE:.0%}, tail = the rest. Zipf exponent: least-squares slope of log count against log rank "
        "over non-zero counts.</p>",
        "<h2>Stages</h2>",
        _kv_table({s: {k: v for k, v in st.items() if k in ("rows_in", "kept", "dropped_total", "dropped", "seconds", "texts", "entries", "t", "expected_kept")} for s, st in stats.items()}, "stages"),
        "<h2>Funnel: rows kept and dropped per stage</h2>",
        '<p class="note">Every stage that decides rows, in pipeline order: the rows it read, kept, and dropped '
        "per reason (each dropped row is in the run's decisions ledger with its reason).</p>",
        _img(files, "funnel.png", "rows kept and dropped per reason at every stage"),
        _funnel_html(funnel),
    ]
    if export is not None:
        parts.append(_export_html(export))
    if languages is not None:
        parts.append(_languages_html(languages, stats))
    parts += [
        "<h2>Long tail</h2>",
        _kv_table(long_tail, "long-tail"),
        _img(files, "rank_frequency.png", "rank-frequency plot, log-log"),
        _img(files, "tail_histogram.png", "concepts per frequency band, log scale"),
    ]
    for step, table in tables.items():
        parts.append(f"<h2>Concept frequency: {html.escape(step)}</h2><h3>Most frequent</h3>")
        top = table[table["count"] > 0].head(RAREST_LISTED)
        parts.append(_df_table(top, "frequency") if len(top) else '<p class="note">No entry has a text at this step.</p>')
        parts += _rarest_html(step, table, never)
    if coverage is not None:
        wide = coverage.pivot_table(index="concept", columns="step", values="count", aggfunc="sum")
        syn = coverage[coverage["step"] == "matched"].set_index("concept")[["most_common_synonym", "most_common_synonym_count"]]
        cov = wide.join(syn, how="left").reset_index()
        first = "matched" if "matched" in cov else cov.columns[1]
        cov = cov.sort_values([first, "concept"], kind="mergesort")
        zero = int((cov[first] == 0).sum())
        parts.append(f"<h2>Downstream coverage ({len(cov)} concepts, rarest that occur first)</h2>")
        parts.append(f"<p class=\"note\">Concepts with no matching text: {zero:,} of {len(cov):,}, listed in "
                     '<a href="never_matched_concepts.txt">never_matched_concepts.txt</a>.</p>')
        shown = cov[cov[first] > 0].head(RAREST_LISTED * 2)
        parts.append(_df_table(shown, "coverage") if len(shown) else '<p class="note">No concept has a matching text.</p>')
    if fit is not None:
        parts.append("<h2>Accuracy vs frequency</h2>")
        parts.append(_kv_table({"fit": fit}, "accuracy-fit"))
        parts.append(_img(files, "accuracy_vs_frequency.png", "accuracy against log10 frequency"))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def render_datacard(
    run_root: str,
    generated: str,
    run_json: Mapping[str, Any],
    stats: Mapping[str, Mapping[str, Any]],
    long_tail: Mapping[str, Any],
    coverage: pd.DataFrame | None,
    fit: Mapping[str, Any] | None,
    never_count: int | None = None,
    export: Mapping[str, str] | None = None,
    languages: pd.DataFrame | None = None,
) -> str:
    """A data card (in the spirit of "The Dataset Nutrition Label"): inputs, every step's config and counts, outputs."""
    lines = [f"# Data card: `{run_root}`", "", f"Generated {generated}.", "", "## What went in", ""]
    ingest = stats.get("ingest", {})
    lines += [f"- input: `{ingest.get('input', 'unknown')}` (format {ingest.get('format', 'unknown')})",
              f"- rows read: {ingest.get('rows_in', 'unknown')}"]
    if "match" in stats:
        lines.append(f"- metadata: `{stats['match'].get('metadata')}` ({stats['match'].get('entries')} entries, "
                     f"mode {stats['match'].get('match_mode')})")
    versions = run_json.get("versions", {})
    lines += [f"- seed: {run_json.get('seed', 'unknown')}; Spark {run_json.get('spark', '?')}; "
              f"python {run_json.get('python', '?')}; config hash `{run_json.get('config_hash', '?')}`"]
    if versions:
        lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    lines += ["", "### Resolved config", "", "```json", json.dumps(_clean(run_json.get("config", {})), indent=2, sort_keys=True), "```", ""]
    lines += ["## Steps", ""]
    for stage, st in stats.items():
        lines.append(f"### {stage}")
        lines.append("")
        if "rows_in" in st:
            lines.append(f"- {st['rows_in']} in, {st['kept']} kept, {st['dropped_total']} dropped")
            for reason, n in (st.get("dropped") or {}).items():
                lines.append(f"  - `{reason}`: {n}")
        for k, v in st.items():
            if k not in ("stage", "rows_in", "kept", "dropped_total", "dropped"):
                lines.append(f"- {k}: {_fmt(v)}")
        lines.append("")
    lines += ["## What came out", ""]
    last = [s for s in stats if "kept" in stats[s]]
    if last:
        lines.append(f"- final stage `{last[-1]}`: {stats[last[-1]]['kept']} texts in `{run_root}/{last[-1]}/data`")
    if export is not None:
        lines += ["", "### Export", ""] + [f"- {k}: {v}" for k, v in export.items()] + ["", "### Long tail"]
    lines += ["", "| statistic | " + " | ".join(long_tail) + " |", "|---|" + "---|" * len(long_tail)]
    keys = [k for k in next(iter(long_tail.values()), {})]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_fmt(long_tail[s].get(k)) for s in long_tail) + " |")
    lines.append("")
    if never_count is not None:
        total = long_tail.get("matched", {}).get("concepts", "?")
        lines.append(f"- metadata entries never matched: {never_count:,} of {_count(total)} (`reports/never_matched.txt`)")
    if coverage is not None:
        m = coverage[coverage["step"] == "matched"]
        lines.append(f"- downstream concepts: {len(m)}, with no matching text: {int((m['count'] == 0).sum())} "
                     "(`reports/never_matched_concepts.txt`)")
    if fit is not None:
        lines += [f"- accuracy vs log10 frequency: slope {_fmt(fit.get('slope'))}, r {_fmt(fit.get('pearson_r'))}, n {fit.get('n')}"]
    if languages is not None:
        md = [c.replace("|", "\\|") for c in LANGUAGE_HEADERS]
        lines += ["", "## Languages", "", _language_note(languages, stats), "",
                  "| " + " | ".join(md) + " |", "|---|" + "---|" * (len(md) - 1)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in language_cells(languages)]
    lines += ["", "Known limits: counts are substring matches of the metadata entries (MetaCLIP); "
              "a text counts once per entry. See reports/long_tail.json and concept_frequency.parquet.", ""]
    return "\n".join(lines)


def describe(stats: dict, root: str) -> str:
    return f"{stats['html']}  (and datacard.md, concept_frequency.parquet, long_tail.json, plots)"


STAGE = Stage(
    name="report",
    config=ReportConfig,
    run=run,
    plan=plan,
    describe=describe,
    help="concept-frequency report, plots, report.html and datacard.md for a run",
    folder="reports",
    decides_rows=False,
)
