"""Concept counting: texts per metadata entry, and texts per downstream concept through its synonyms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.core.config import ConfigError
from pipeline.core.protocol import Context, Input, Output, Plan, Stage


@dataclass(frozen=True)
class CountConfig:
    # Optional downstream concept list with synonyms ({concept: [synonym, ...]}), counted too.
    concepts: str | None = None

    def validate(self, where: str) -> None:
        pass



def entry_counts(offsets: np.ndarray, values: np.ndarray, n_entries: int) -> np.ndarray:
    """Texts per entry from CSR entry ids (ids are unique within a text, so a bincount is a text count)."""
    return np.bincount(values, minlength=n_entries).astype(np.int64)


class ConceptIndex:
    """Maps matched synonym ids to concept ids; a synonym may belong to several concepts."""

    def __init__(self, entries: Sequence[str], synonyms: dict[str, Sequence[str]]) -> None:
        position = {e: i for i, e in enumerate(entries)}
        self.concepts = list(synonyms)
        pairs = sorted(
            {(position[s], c) for c, name in enumerate(self.concepts) for s in synonyms[name] if s in position}
        )
        entry_of = np.array([p[0] for p in pairs], np.int64)
        self._concept = np.array([p[1] for p in pairs], np.int64)
        self._offsets = np.searchsorted(entry_of, np.arange(len(entries) + 1))

    def concept_counts(self, offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Texts per concept: a text counts once for a concept when it contains any of its synonyms."""
        n_texts = len(offsets) - 1
        text = np.repeat(np.arange(n_texts, dtype=np.int64), np.diff(offsets))
        lo, hi = self._offsets[values], self._offsets[np.asarray(values) + 1]
        per = hi - lo
        text = np.repeat(text, per)
        pick = np.repeat(lo, per) + (np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per))
        pairs = np.unique(text * len(self.concepts) + self._concept[pick])
        return np.bincount(pairs % len(self.concepts), minlength=len(self.concepts)).astype(np.int64)


# --- Spark adapter -------------------------------------------------------------------------


def _sum_partials(partials, name: str):
    from pyspark.sql import functions as F

    return partials.groupBy("id").agg(F.sum("count").alias("count")).withColumnRenamed("id", name)


def count_entries(df, n_entries: int):
    """(entry_id, count) for every entry with a non-zero count. Needs: entry_ids.

    Each task adds up its batches into one vector and emits only the non-zero cells, so the
    shuffle carries at most (tasks x entries seen) rows, not one row per match.
    """
    import pyarrow as pa

    from pipeline.core.contracts import require_columns

    require_columns(df, ("entry_ids",), "count")

    def run(batches):
        total = np.zeros(n_entries, np.int64)
        for batch in batches:
            total += entry_counts(None, batch.column(0).flatten().to_numpy(zero_copy_only=False), n_entries)
        nz = np.flatnonzero(total)
        yield pa.RecordBatch.from_arrays([pa.array(nz, pa.int32()), pa.array(total[nz], pa.int64())], names=["id", "count"])

    partials = df.select("entry_ids").mapInArrow(run, "id int, count long")
    return _sum_partials(partials, "entry_id")


def count_concepts(df, concept_entries: Sequence[str], synonyms: dict[str, Sequence[str]], mode: str, backend: str):
    """Per concept and per synonym, the number of texts containing it. Needs: text.

    Returns (concepts frame: concept_id, count; synonyms frame: synonym_id, count).
    """
    import pyarrow as pa

    from pipeline.core.contracts import require_columns
    from pipeline.kernels.matcher import entries_fingerprint, get_matcher

    require_columns(df, ("text",), "count")
    key = "concepts-" + entries_fingerprint(concept_entries, mode)
    sc = df.sparkSession.sparkContext
    shared_entries = sc.broadcast(list(concept_entries))
    shared_synonyms = sc.broadcast({k: list(v) for k, v in synonyms.items()})
    n_concepts, n_syn = len(synonyms), len(concept_entries)

    def run(batches):
        matcher = get_matcher(key, lambda: shared_entries.value, mode, backend)
        index = ConceptIndex(shared_entries.value, shared_synonyms.value)
        by_concept = np.zeros(n_concepts, np.int64)
        by_synonym = np.zeros(n_syn, np.int64)
        for batch in batches:
            offsets, values = matcher.match_batch(batch.column(0).to_pylist())
            by_concept += index.concept_counts(offsets, values)
            by_synonym += entry_counts(offsets, values, n_syn)
        for kind, vec in ((0, by_concept), (1, by_synonym)):
            nz = np.flatnonzero(vec)
            yield pa.RecordBatch.from_arrays(
                [pa.array(np.full(len(nz), kind), pa.int8()), pa.array(nz, pa.int32()), pa.array(vec[nz], pa.int64())],
                names=["kind", "id", "count"],
            )

    partials = df.select("text").mapInArrow(run, "kind byte, id int, count long").cache()
    concepts = _sum_partials(partials.where("kind = 0").drop("kind"), "concept_id")
    synonyms_df = _sum_partials(partials.where("kind = 1").drop("kind"), "synonym_id")
    return concepts, synonyms_df


def language_stats(df, table, meta) -> dict[str, dict[str, int]]:
    """Per metadata language: its texts in the match output and its matches (sum of entry counts)."""
    from pyspark.sql import functions as F

    texts = dict(df.groupBy("metadata_language").count().collect())
    matches = dict(table.groupBy("language").agg(F.sum("count")).collect())
    return {
        lang: {"texts": int(texts.get(lang, 0)), "matches": int(matches.get(lang) or 0)}
        for lang in sorted(set(meta.languages) | set(texts))
    }


# --------------------------------------------------------------------------- the stage


def plan(ctx: Context) -> Plan:
    """The match stage's entry list and mode, and the concept file's contents, decide the counts."""
    from pipeline.concepts.metadata import load_concepts
    from pipeline.kernels.matcher import entries_fingerprint

    cfg: CountConfig = ctx.cfg
    up = ctx.input()
    if up.dir is None or not ctx.run.fs.exists(f"{up.dir}/metadata.json"):
        raise FileNotFoundError(f"{up.given}: not a match stage output (no metadata.json beside its data)")
    entries = ctx.run.fs.read_json(f"{up.dir}/metadata.json")
    mode = ctx.run.fs.read_json(f"{up.dir}/stats.json")["match_mode"]
    meta = None
    if ctx.run.fs.exists(f"{up.dir}/languages.json"):
        from pipeline.kernels.worldwide import LanguageMetadata

        meta = LanguageMetadata.from_json(ctx.run.fs.read_json(f"{up.dir}/languages.json"), entries)
    concepts = load_concepts(cfg.concepts) if cfg.concepts else None
    if concepts is not None and not concepts.synonyms:
        raise ConfigError(f"count.concepts: {cfg.concepts} is not a {{concept: [synonyms]}} file")
    ctx.state.update(entries=entries, mode=mode, concepts=concepts, meta=meta)
    return Plan(
        fingerprint={
            "entries": entries_fingerprint(entries, mode),
            "languages": meta.to_json() if meta else None,
            "concepts": entries_fingerprint(list(concepts.entries), mode) if concepts else None,
            "synonyms": concepts.synonyms if concepts else None,
        }
    )


def run(ctx: Context) -> Output:
    """Texts per entry (all entries, zeros included) and, with a concept file, texts per concept."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    spark = ctx.spark
    entries, mode, concepts = ctx.state["entries"], ctx.state["mode"], ctx.state["concepts"]
    source = ctx.input().path
    df = spark.read.parquet(source)
    n_texts = df.count()
    meta = ctx.state["meta"]
    languages = meta.language_of_ids(np.arange(len(entries))).tolist() if meta else [None] * len(entries)
    table = spark.createDataFrame(
        list(zip(range(len(entries)), entries, languages, strict=True)), "entry_id int, entry string, language string"
    ).join(count_entries(df, len(entries)), on="entry_id", how="left")
    table = table.select(
        "entry_id", "entry", "language", F.coalesce("count", F.lit(0)).cast("long").alias("count"), F.lit(mode).alias("match_mode")
    ).orderBy("entry_id").coalesce(1)
    tables = {"data": table}
    stats = {"input": source, "texts": n_texts, "entries": len(entries), "match_mode": mode}
    if meta is not None:
        stats["languages"] = language_stats(df, table, meta)
    if concepts is not None:
        backend = ctx.pipeline.match.backend
        by_concept, by_synonym = count_concepts(df, list(concepts.entries), concepts.synonyms, mode, backend)
        names = list(concepts.synonyms)
        position = {e: i for i, e in enumerate(concepts.entries)}
        syn = spark.createDataFrame(
            [(c, name, s, position[s]) for c, name in enumerate(names) for s in concepts.synonyms[name]],
            "concept_id int, concept string, synonym string, synonym_id int",
        ).join(by_synonym, on="synonym_id", how="left").select(
            "concept_id", "concept", "synonym", F.coalesce("count", F.lit(0)).cast("long").alias("count")
        )
        top = syn.withColumn(
            "_r", F.row_number().over(Window.partitionBy("concept_id").orderBy(F.desc("count"), F.asc("synonym")))
        ).where("_r = 1").select("concept_id", F.col("synonym").alias("most_common_synonym"), F.col("count").alias("most_common_synonym_count"))
        tables["concepts"] = (
            spark.createDataFrame([(c, n) for c, n in enumerate(names)], "concept_id int, concept string")
            .join(by_concept, on="concept_id", how="left")
            .join(top, on="concept_id", how="left")
            .select(
                "concept_id", "concept", F.coalesce("count", F.lit(0)).cast("long").alias("count"),
                "most_common_synonym", "most_common_synonym_count", F.lit(mode).alias("match_mode"),
            )
            .orderBy("concept_id")
            .coalesce(1)
        )
        tables["synonyms"] = syn.orderBy("concept_id", "synonym").coalesce(1)
        stats.update({"concepts_file": ctx.cfg.concepts, "concepts": len(names)})
    return Output(tables=tables, stats=stats)


def describe(stats: dict, root: str) -> str:
    return f"{stats['texts']} texts; per-entry counts in {root}/count/data, concepts in {root}/count/concepts"


STAGE = Stage(
    name="count",
    config=CountConfig,
    run=run,
    plan=plan,
    describe=describe,
    help="texts per metadata entry (and per concept through its synonyms)",
    inputs=(Input("input", ("match",), "a run folder (its match output) or a match stage folder"),),
    schemas={"data": "count", "concepts": "concept_counts"},
    decides_rows=False,
)
