"""Stage runners shared by the CLI, spark-submit jobs and Airflow: read, call the stage, commit."""

from __future__ import annotations

import logging
import time

from pipeline.config import ConfigError, PipelineConfig
from pipeline.ingest import with_ingest_decisions
from pipeline.runs import Run, StageResult, config_hash
from pipeline.sources import read_pool

log = logging.getLogger(__name__)


def run_ingest(spark, input_path: str, run_root: str, cfg: PipelineConfig, force: bool = False) -> StageResult:
    """Ingest `input_path` into `<run_root>/ingest` and the ledger; skip when already complete."""
    run = Run(spark, run_root)
    fingerprint = config_hash({"input": run.fs.qualify(input_path), "ingest": cfg.ingest.__dict__})
    if not force and run.is_complete("ingest", fingerprint):
        log.info("ingest: complete in %s with the same input and config; skipping", run.stage_dir("ingest"))
        return StageResult("ingest", run.stage_dir("ingest"), run.stats("ingest"), skipped=True)
    started = time.time()
    raw = read_pool(spark, input_path, cfg.ingest)
    decided = with_ingest_decisions(raw.df, cfg.ingest, raw.uid_given, raw.extras)
    return run.commit(
        "ingest",
        decided,
        fingerprint,
        shape=lambda kept: kept.select("uid", "url", "text", *[c for c in raw.extras if c in kept.columns]),
        extra_stats={"input": input_path, "format": raw.fmt, "uid_column": raw.uid_given},
        output_partitions=cfg.ingest.output_partitions,
        started=started,
    )


def _entries_of(path: str):
    from pipeline.metadata import load_concepts

    return load_concepts(path)


def run_match(spark, input_path: str, run_root: str, cfg: PipelineConfig, force: bool = False) -> StageResult:
    """Match every text of the ingest output against the metadata entries."""
    from pyspark.sql import functions as F

    from pipeline.match import entries_fingerprint, with_match_decisions

    if not cfg.match.metadata:
        raise ConfigError("match: no metadata given; pass --metadata FILE (a JSON list, synonyms JSON or text file)")
    run = Run(spark, run_root)
    source = run.resolve_input(input_path, "ingest")
    concepts = _entries_of(cfg.match.metadata)
    entries = list(concepts.entries)
    fingerprint = config_hash(
        {"input": run.fs.qualify(source), "entries": entries_fingerprint(entries, cfg.match.mode), "match": cfg.match.__dict__}
    )
    if not force and run.is_complete("match", fingerprint):
        log.info("match: complete with the same input, metadata and config; skipping")
        return StageResult("match", run.stage_dir("match"), run.stats("match"), skipped=True)
    started = time.time()
    df = spark.read.parquet(source)
    decided = with_match_decisions(df, entries, cfg.match.mode, cfg.match.backend)
    front = ["uid", "text", "entry_ids"]
    return run.commit(
        "match",
        decided,
        fingerprint,
        shape=lambda kept: kept.select(*front, *[c for c in kept.columns if c not in front]),
        detail=lambda: F.when(F.col("_reason").isNotNull(), F.lit(f"no entry of {len(entries)} matched ({cfg.match.mode})")),
        extra_stats={
            "input": source,
            "metadata": cfg.match.metadata,
            "entries": len(entries),
            "match_mode": cfg.match.mode,
            "backend": cfg.match.backend,
        },
        started=started,
        files={"metadata.json": entries},
    )


def run_count(spark, input_path: str, run_root: str, cfg: PipelineConfig, force: bool = False) -> StageResult:
    """Texts per entry (all entries, zeros included) and, with a concept file, texts per concept."""
    from pyspark.sql import functions as F

    from pipeline.count import count_concepts, count_entries
    from pipeline.match import entries_fingerprint

    run = Run(spark, run_root)
    source = run.resolve_input(input_path, "match")
    match_dir = source[: -len("/data")] if source.endswith("/data") else None
    if match_dir is None or not run.fs.exists(f"{match_dir}/metadata.json"):
        raise FileNotFoundError(f"{input_path}: not a match stage output (no metadata.json beside its data)")
    entries = run.fs.read_json(f"{match_dir}/metadata.json")
    mode = run.fs.read_json(f"{match_dir}/stats.json")["match_mode"]
    concepts = _entries_of(cfg.count.concepts) if cfg.count.concepts else None
    fingerprint = config_hash(
        {
            "input": run.fs.qualify(source),
            "entries": entries_fingerprint(entries, mode),
            "concepts": entries_fingerprint(list(concepts.entries), mode) if concepts else None,
            "synonyms": concepts.synonyms if concepts else None,
        }
    )
    if not force and run.is_complete("count", fingerprint):
        log.info("count: complete with the same input and concepts; skipping")
        return StageResult("count", run.stage_dir("count"), run.stats("count"), skipped=True)
    started = time.time()
    df = spark.read.parquet(source)
    n_texts = df.count()
    table = spark.createDataFrame(
        [(i, e) for i, e in enumerate(entries)], "entry_id int, entry string"
    ).join(count_entries(df, len(entries)), on="entry_id", how="left")
    table = table.select(
        "entry_id", "entry", F.coalesce("count", F.lit(0)).cast("long").alias("count"), F.lit(mode).alias("match_mode")
    ).orderBy("entry_id").coalesce(1)
    tables = {"data": table}
    extra = {"input": source, "texts": n_texts, "entries": len(entries), "match_mode": mode}
    if concepts is not None:
        if not concepts.synonyms:
            raise ConfigError(f"count.concepts: {cfg.count.concepts} is not a {{concept: [synonyms]}} file")
        by_concept, by_synonym = count_concepts(df, list(concepts.entries), concepts.synonyms, mode, cfg.match.backend)
        names = list(concepts.synonyms)
        syn_rows = [(c, name, s) for c, name in enumerate(names) for s in concepts.synonyms[name]]
        position = {e: i for i, e in enumerate(concepts.entries)}
        syn = spark.createDataFrame(
            [(c, name, s, position[s]) for c, name, s in syn_rows], "concept_id int, concept string, synonym string, synonym_id int"
        ).join(by_synonym, on="synonym_id", how="left").select(
            "concept_id", "concept", "synonym", F.coalesce("count", F.lit(0)).cast("long").alias("count")
        ).cache()
        from pyspark.sql import Window

        top = syn.withColumn(
            "_r", F.row_number().over(Window.partitionBy("concept_id").orderBy(F.desc("count"), F.asc("synonym")))
        ).where("_r = 1").select("concept_id", F.col("synonym").alias("most_common_synonym"), F.col("count").alias("most_common_synonym_count"))
        concept_table = (
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
        tables["concepts"] = concept_table
        tables["synonyms"] = syn.orderBy("concept_id", "synonym").coalesce(1)
        extra.update({"concepts_file": cfg.count.concepts, "concepts": len(names)})
    result = run.commit_tables("count", tables, fingerprint, extra_stats=extra, started=started)
    nz = spark.read.parquet(f"{run.stage_dir('count')}/data").where("count > 0").count()
    log.info("count: %d of %d entries occur in %d texts", nz, len(entries), n_texts)
    return result


def run_balance(spark, input_path: str, counts_path: str | None, run_root: str, cfg: PipelineConfig, force: bool = False) -> StageResult:
    """MetaCLIP balancing of the match output with the count stage's entry counts."""
    import numpy as np
    from pyspark.sql import functions as F

    from pipeline.balance import (
        keep_probabilities,
        threshold_for_tail_fraction,
        with_balance_decisions,
    )

    b = cfg.balance
    if (b.t is None) == (b.tail_fraction is None):
        raise ConfigError("balance: give exactly one of --t N or --tail-fraction F")
    run = Run(spark, run_root)
    source = run.resolve_input(input_path, "match")
    counts_source = run.resolve_input(counts_path or run_root, "count")
    counts_df = spark.read.parquet(counts_source)
    rows = counts_df.select("entry_id", "count").orderBy("entry_id").toPandas()
    counts = np.zeros(int(rows.entry_id.max()) + 1 if len(rows) else 0, np.int64)
    counts[rows.entry_id.to_numpy()] = rows["count"].to_numpy()
    if b.t is not None:
        t, tail_share = float(b.t), float(counts[counts < b.t].sum() / max(1, counts.sum()))
    else:
        t_int, tail_share = threshold_for_tail_fraction(counts, b.tail_fraction)
        t = float(t_int)
    fingerprint = config_hash(
        {"input": run.fs.qualify(source), "counts": run.fs.qualify(counts_source), "t": t, "seed": cfg.seed}
    )
    if not force and run.is_complete("balance", fingerprint):
        log.info("balance: complete with the same input, counts, t and seed; skipping")
        return StageResult("balance", run.stage_dir("balance"), run.stats("balance"), skipped=True)
    started = time.time()
    p = keep_probabilities(counts, t)
    df = spark.read.parquet(source)
    decided = with_balance_decisions(df, p, cfg.seed, t)
    front = ["uid", "text", "entry_ids", "keep_prob"]

    def expected(written) -> dict:
        return {"expected_kept": round(float(written.agg(F.sum("keep_prob")).first()[0] or 0.0), 3)}

    result = run.commit(
        "balance",
        decided,
        fingerprint,
        stats_from=expected,
        shape=lambda kept: kept.select(*front, *[c for c in kept.columns if c not in front]),
        detail=lambda: F.when(
            F.col("_reason").isNotNull(), F.format_string(f"p_keep=%.6f at t={t:g}", F.col("keep_prob"))
        ),
        extra_stats={
            "input": source,
            "counts": counts_source,
            "t": t,
            "t_from": "t" if b.t is not None else f"tail_fraction={b.tail_fraction}",
            "tail_share": tail_share,
            "seed": cfg.seed,
            "head_entries": int((counts > t).sum()),
        },
        started=started,
    )
    log.info("balance: t=%g, expected %.1f kept, actual %d", t, result.stats["expected_kept"], result.stats["kept"])
    return result
