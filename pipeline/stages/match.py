"""MetaCLIP substring matching: the Spark-free kernel, its reference loop, and the Spark adapter.

Semantics ("Demystifying CLIP Data", MetaCLIP's `substr_matching`): case-sensitive; the
text is padded with one space at each end, each of , . ; : ? ! and the backtick gets a
space on both sides, tab/newline/carriage return become spaces; entry e matches when
" " + e + " " is a substring of that spaced text. Each entry counts once per text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.core.config import ConfigError
from pipeline.core.protocol import Context, Input, Output, Plan, Stage
from pipeline.kernels.matcher import (
    BACKENDS,
    MODES,
    entries_fingerprint,
    get_matcher,
)


@dataclass(frozen=True)
class MatchConfig:
    # A MetaCLIP metadata.json (JSON list), a {concept: [synonyms]} JSON or a text file, one entry a line.
    metadata: str | None = None
    # "metaclip" is MetaCLIP's exact, case-sensitive matching; "case_insensitive" lowercases both sides.
    mode: str = "metaclip"
    backend: str = "ahocorasick_rs"

    def validate(self, where: str) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"{where}.mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"{where}.backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")


log = logging.getLogger(__name__)

# --- Spark adapter -------------------------------------------------------------------------


def with_entry_ids(df, entries: Sequence[str], mode: str = "metaclip", backend: str = "ahocorasick_rs"):
    """Add `entry_ids` (sorted list<int32>, possibly empty) for the `text` column.

    Needs: text. Adds: entry_ids. The entry list travels once per executor as a broadcast;
    each Python worker process builds its automaton on first use and keeps it for every
    later batch and task (Spark reuses Python workers).
    """
    import pyarrow as pa
    from pyspark.sql import types as T

    from pipeline.core.contracts import require_columns

    require_columns(df, ("text",), "match")
    key = entries_fingerprint(entries, mode)
    shared = df.sparkSession.sparkContext.broadcast(list(entries))
    out_schema = T.StructType(
        df.schema.fields + [T.StructField("entry_ids", T.ArrayType(T.IntegerType(), containsNull=False), False)]
    )
    list_type = pa.list_(pa.field("element", pa.int32(), nullable=False))
    text_index = df.columns.index("text")

    def run(batches):
        matcher = get_matcher(key, lambda: shared.value, mode, backend)
        for batch in batches:
            offsets, values = matcher.match_batch(batch.column(text_index).to_pylist())
            ids = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int32()), type=list_type)
            yield pa.RecordBatch.from_arrays(
                [*batch.columns, ids], schema=batch.schema.append(pa.field("entry_ids", list_type, nullable=False))
            )

    return df.mapInArrow(run, out_schema)


def with_match_decisions(df, entries: Sequence[str], mode: str = "metaclip", backend: str = "ahocorasick_rs"):
    """The match stage: `entry_ids` per text; texts matching nothing are dropped (MetaCLIP's curation).

    Needs: uid, text. Adds: entry_ids, _reason, _detail.
    """
    from pyspark.sql import functions as F

    from pipeline.core import reasons as R
    from pipeline.core.contracts import require_columns

    require_columns(df, ("uid", "text"), "match")
    matched = with_entry_ids(df, entries, mode, backend)
    none = F.size("entry_ids") == 0
    return matched.withColumn("_reason", F.when(none, F.lit(R.NO_CONCEPT_MATCH))).withColumn(
        "_detail", F.when(none, F.lit(f"no entry of {len(entries)} matched ({mode})"))
    )


# --------------------------------------------------------------------------- the stage


def plan(ctx: Context) -> Plan:
    """The metadata list is read here: its contents (not its path) are part of the fingerprint."""
    from pipeline.concepts.metadata import load_concepts

    cfg: MatchConfig = ctx.cfg
    if not cfg.metadata:
        raise ConfigError("match: no metadata given; pass --metadata FILE (a JSON list, synonyms JSON or text file)")
    entries = list(load_concepts(cfg.metadata).entries)
    ctx.state["entries"] = entries
    return Plan(fingerprint={"entries": entries_fingerprint(entries, cfg.mode)})


def run(ctx: Context) -> Output:
    """Match every text of the input against the metadata entries; a text matching none is dropped."""
    cfg: MatchConfig = ctx.cfg
    entries = ctx.state["entries"]
    source = ctx.input().path
    df = ctx.spark.read.parquet(source)
    decided = with_match_decisions(df, entries, cfg.mode, cfg.backend)
    front = ["uid", "text", "entry_ids"]
    return Output(
        decided=decided,
        shape=lambda kept: kept.select(*front, *[c for c in kept.columns if c not in front]),
        stats={"input": source, "metadata": cfg.metadata, "entries": len(entries), "match_mode": cfg.mode, "backend": cfg.backend},
        files={"metadata.json": entries},
    )


def describe(stats: dict, root: str) -> str:
    return f"against {stats['entries']} entries ({stats['match_mode']})"


STAGE = Stage(
    name="match",
    config=MatchConfig,
    run=run,
    plan=plan,
    describe=describe,
    help="MetaCLIP substring matching of every text against a metadata list",
    inputs=(Input("input", ("ingest",), "a run folder (its ingest output) or a Parquet folder with uid, text"),),
    schemas={"data": "match"},
)
