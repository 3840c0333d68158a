"""Concept counting: texts per metadata entry, and texts per downstream concept through its synonyms."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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

    from pipeline.contracts import require_columns

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

    from pipeline.contracts import require_columns
    from pipeline.match import entries_fingerprint, get_matcher

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
