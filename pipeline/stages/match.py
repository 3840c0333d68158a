"""MetaCLIP substring matching: the Spark-free kernel, its reference loop, and the Spark adapter.

Semantics ("Demystifying CLIP Data", MetaCLIP's `substr_matching`): case-sensitive; the
text is padded with one space at each end, each of , . ; : ? ! and the backtick gets a
space on both sides, tab/newline/carriage return become spaces; entry e matches when
" " + e + " " is a substring of that spaced text. Each entry counts once per text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.core.config import ConfigError
from pipeline.core.protocol import Context, Input, Output, Plan, Stage
from pipeline.kernels.matcher import (
    BACKENDS,
    MODES,
    entries_fingerprint,
    get_matcher,
)
from pipeline.kernels.worldwide import MAX_PATTERNS, LanguageMetadata


@dataclass(frozen=True)
class MatchConfig:
    # A MetaCLIP metadata.json (JSON list), a {concept: [synonyms]} JSON or a text file, one entry
    # a line; or, for worldwide curation, a folder of <language>.json lists.
    metadata: str | None = None
    # "metaclip" is MetaCLIP's exact, case-sensitive matching; "case_insensitive" lowercases both sides.
    mode: str = "metaclip"
    backend: str = "ahocorasick_rs"
    # Read a single metadata JSON as {language: [entries]} (MetaCLIP 2) rather than {concept:
    # [synonyms]}. A metadata folder is always per language.
    per_language: bool = False
    # Worldwide: language code (from the pool's language column or language ID) -> metadata
    # language, for codes that differ ({"nb": "no", "zh-Hant": "zh"}). Unmapped codes without a
    # list of their own go to the "other" list.
    language_map: dict[str, str] = field(default_factory=dict)
    # Worldwide: patterns kept built per Python worker; automata of languages not seen lately
    # are dropped beyond it, so memory stays bounded with hundreds of languages.
    max_patterns: int = MAX_PATTERNS

    def validate(self, where: str) -> None:
        if self.max_patterns < 1:
            raise ConfigError(f"{where}.max_patterns: must be >= 1, got {self.max_patterns}")
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


def with_world_match_decisions(
    df, meta: LanguageMetadata, mode: str = "metaclip", backend: str = "ahocorasick_rs",
    language_map: dict[str, str] | None = None, max_patterns: int = MAX_PATTERNS,
):
    """Worldwide (MetaCLIP 2) matching: each text against its own language's list.

    Needs: uid, text; `language` when the pool has one, else language ID fills it. Adds:
    language (when missing), metadata_language, entry_ids (global ids), _reason, _detail.
    """
    import pyarrow as pa
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from pipeline.core import reasons as R
    from pipeline.core.contracts import require_columns
    from pipeline.kernels.worldwide import get_world_matcher, metadata_language

    require_columns(df, ("uid", "text"), "match")
    if len(meta.entries) > max_patterns:
        # The automata can't all be held at once: order each partition by language (language
        # ID first where the input has none), so each automaton is built about once per task.
        if "language" not in df.columns:
            df = with_language_id(df)
        df = df.sortWithinPartitions("language")
    key = entries_fingerprint([*meta.entries, *meta.languages, *map(str, meta.starts)], mode)
    shared = df.sparkSession.sparkContext.broadcast(meta)
    mapping = dict(language_map or {})
    has_language = "language" in df.columns
    if has_language:
        df = df.withColumn("language", F.col("language").cast("string"))
    added = [] if has_language else [T.StructField("language", T.StringType(), True)]
    out_schema = T.StructType(
        df.schema.fields
        + added
        + [
            T.StructField("metadata_language", T.StringType(), False),
            T.StructField("entry_ids", T.ArrayType(T.IntegerType(), containsNull=False), False),
        ]
    )
    list_type = pa.list_(pa.field("element", pa.int32(), nullable=False))
    text_index = df.columns.index("text")
    lang_index = df.columns.index("language") if has_language else None

    def run(batches):
        matcher = get_world_matcher(key, lambda: shared.value, mode, backend, max_patterns)
        languages = frozenset(matcher.meta.languages)
        for batch in batches:
            texts = batch.column(text_index).to_pylist()
            if lang_index is None:
                from pipeline.kernels.langid import identify

                codes, _ = identify(texts)
                columns = [*batch.columns, pa.array(codes, pa.string())]
                fields = [*batch.schema, pa.field("language", pa.string())]
            else:
                codes = batch.column(lang_index).to_pylist()
                columns, fields = list(batch.columns), list(batch.schema)
            targets = [metadata_language(c, languages, mapping) for c in codes]
            offsets, values = matcher.match_batch(texts, targets)
            ids = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int32()), type=list_type)
            yield pa.RecordBatch.from_arrays(
                [*columns, pa.array(targets, pa.string()), ids],
                schema=pa.schema(
                    [*fields, pa.field("metadata_language", pa.string(), False), pa.field("entry_ids", list_type, False)]
                ),
            )

    matched = df.mapInArrow(run, out_schema)
    none = F.size("entry_ids") == 0
    listed = F.col("metadata_language").isin(list(meta.languages))
    detail = F.when(
        listed,
        F.concat(
            F.lit("no entry of the "), F.col("metadata_language"), F.lit(" list matched (language "),
            F.coalesce(F.col("language"), F.lit("unknown")), F.lit(f", {mode})"),
        ),
    ).otherwise(F.concat(F.lit("no metadata list for language "), F.coalesce(F.col("language"), F.lit("(unknown)"))))
    return matched.withColumn("_reason", F.when(none, F.lit(R.NO_CONCEPT_MATCH))).withColumn("_detail", F.when(none, detail))


def with_language_id(df):
    """Add `language`, lid.176's code per text (null for blank texts). Needs: text."""
    import pyarrow as pa
    from pyspark.sql import types as T

    schema = T.StructType(df.schema.fields + [T.StructField("language", T.StringType(), True)])
    text_index = df.columns.index("text")

    def run(batches):
        from pipeline.kernels.langid import identify

        for batch in batches:
            codes, _ = identify(batch.column(text_index).to_pylist())
            yield pa.RecordBatch.from_arrays(
                [*batch.columns, pa.array(codes, pa.string())], schema=batch.schema.append(pa.field("language", pa.string()))
            )

    return df.mapInArrow(run, schema)


# --------------------------------------------------------------------------- the stage


def is_per_language(cfg: MatchConfig) -> bool:
    from pathlib import Path

    return cfg.per_language or Path(cfg.metadata or "").is_dir()


def plan(ctx: Context) -> Plan:
    """The metadata list is read here: its contents (not its path) are part of the fingerprint."""
    from pipeline.concepts.metadata import load_concepts
    from pipeline.kernels.worldwide import load_language_metadata

    cfg: MatchConfig = ctx.cfg
    if not cfg.metadata:
        raise ConfigError("match: no metadata given; pass --metadata FILE (a JSON list, synonyms JSON or text file)")
    if is_per_language(cfg):
        meta = load_language_metadata(cfg.metadata, per_language=True)
        ctx.state.update(entries=list(meta.entries), meta=meta)
        return Plan(
            fingerprint={
                "entries": entries_fingerprint(list(meta.entries), cfg.mode),
                "languages": meta.to_json(),
                "language_map": dict(sorted(cfg.language_map.items())),
            }
        )
    entries = list(load_concepts(cfg.metadata).entries)
    ctx.state.update(entries=entries, meta=None)
    return Plan(fingerprint={"entries": entries_fingerprint(entries, cfg.mode)})


def run(ctx: Context) -> Output:
    """Match every text of the input against the metadata entries; a text matching none is dropped."""
    cfg: MatchConfig = ctx.cfg
    entries, meta = ctx.state["entries"], ctx.state["meta"]
    source = ctx.input().path
    df = ctx.spark.read.parquet(source)
    stats = {"input": source, "metadata": cfg.metadata, "entries": len(entries), "match_mode": cfg.mode, "backend": cfg.backend}
    files: dict = {"metadata.json": entries}
    if meta is None:
        decided = with_match_decisions(df, entries, cfg.mode, cfg.backend)
        front = ["uid", "text", "entry_ids"]
    else:
        decided = with_world_match_decisions(df, meta, cfg.mode, cfg.backend, cfg.language_map, cfg.max_patterns)
        front = ["uid", "text", "language", "metadata_language", "entry_ids"]
        files["languages.json"] = meta.to_json()
        stats.update(
            languages={r["language"]: r["entries"] for r in meta.to_json()},
            language_from="the input's language column" if "language" in df.columns else "language ID (lid.176)",
            padding="cjk_aware",
        )
    return Output(
        decided=decided,
        shape=lambda kept: kept.select(*front, *[c for c in kept.columns if c not in front]),
        stats=stats,
        files=files,
    )


def describe(stats: dict, root: str) -> str:
    languages = f" in {len(stats['languages'])} languages" if stats.get("languages") else ""
    return f"against {stats['entries']} entries{languages} ({stats['match_mode']})"


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
