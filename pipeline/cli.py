"""The `curate` command line. Each subcommand calls the same function the Python API exposes."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from pipeline import __version__
from pipeline.config import INGEST_FORMATS, ConfigError, PipelineConfig, load_config
from pipeline.contracts import MissingColumnsError
from pipeline.errors import UserError, no_room_message
from pipeline.match import BACKENDS, MODES
from pipeline.metadata import MetadataError
from pipeline.report import ReportError
from pipeline.sources import InputError
from pipeline.spark import JavaMissingError

log = logging.getLogger("curate")

# Errors a person can act on: printed as one line, exit code 2.
USER_ERRORS = (
    UserError, ConfigError, InputError, MissingColumnsError, JavaMissingError, FileNotFoundError, MetadataError, ReportError,
)
# Modules that add their own subcommands with `add_cli(subparsers)`; each sets `func` on its parser.
# Keep their top-level imports light (no torch, faiss): `curate --help` imports them all.
PLUGIN_CLIS = ("pipeline.metadata", "pipeline.report", "pipeline.runner", "pipeline.cluster", "pipeline.prune", "pipeline.download", "pipeline.embed")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (see configs/demo.yaml)")
    p.add_argument("--master", help="Spark master (default local[*]; ignored under spark-submit)")
    p.add_argument("--seed", type=int, help="random seed recorded in run.json (default 0)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="curate",
        description="Curate web-scale image-text pools on Spark: ingest, match, count, balance, ... "
        "Every stage reads and writes Parquet under one run folder and records each decision.",
    )
    parser.add_argument("--version", action="version", version=f"curate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("ingest", help="read a pool in any supported format into <output>/ingest")
    p.add_argument("--input", required=True, help="file or folder: Parquet, CSV/TSV, JSONL, COCO json, WebDataset tars, ...")
    p.add_argument("--output", required=True, help="the run folder")
    p.add_argument("--format", choices=INGEST_FORMATS, help="input format (default: auto-detect)")
    p.add_argument("--text-col", help="caption column (default: text, caption, TEXT, alt_text, ...)")
    p.add_argument("--url-col", help="image URL column (default: url, URL, image_url, ...)")
    p.add_argument("--uid-col", help="uid column (default: uid if present, else a hash of url + text)")
    p.add_argument("--max-text-chars", type=int, help="drop captions longer than this (default 65536)")
    p.add_argument("--force", action="store_true", help="redo the stage even if it is complete")
    _common(p)

    p = sub.add_parser("match", help="MetaCLIP substring matching of every text against a metadata list")
    p.add_argument("--input", required=True, help="a run folder (its ingest output) or a Parquet folder with uid, text")
    p.add_argument("--metadata", help="metadata.json (JSON list), {concept: [synonyms]} JSON, or one entry a line")
    p.add_argument("--output", required=True, help="the run folder")
    p.add_argument("--mode", choices=MODES, help="metaclip (exact, default) or case_insensitive")
    p.add_argument("--backend", choices=BACKENDS, help="Aho-Corasick implementation (default ahocorasick_rs)")
    p.add_argument("--force", action="store_true", help="redo the stage even if it is complete")
    _common(p)

    p = sub.add_parser("count", help="texts per metadata entry (and per concept through its synonyms)")
    p.add_argument("--input", required=True, help="a run folder (its match output) or a match stage folder")
    p.add_argument("--output", required=True, help="the run folder")
    p.add_argument("--concepts", help="a {concept: [synonym, ...]} JSON file to count as well")
    p.add_argument("--force", action="store_true", help="redo the stage even if it is complete")
    _common(p)

    p = sub.add_parser("balance", help="MetaCLIP balancing: sample entries with count > t down to about t")
    p.add_argument("--input", required=True, help="a run folder (its match output) or a match stage folder")
    p.add_argument("--counts", help="the count stage output (default: the run folder's)")
    p.add_argument("--output", required=True, help="the run folder")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--t", type=int, help="the threshold t (MetaCLIP: 20000 for 400M of 1.6B)")
    group.add_argument("--tail-fraction", type=float, help="pick t so this share of matches is in entries with count < t")
    p.add_argument("--force", action="store_true", help="redo the stage even if it is complete")
    _common(p)

    import importlib

    for module in PLUGIN_CLIS:
        importlib.import_module(module).add_cli(sub)

    p = sub.add_parser("demo", help="generate a demo pool and run the pipeline on it in Spark local mode")
    p.add_argument("--output", default="runs/demo", help="folder for the pool and the run (default runs/demo)")
    p.add_argument("--rows", type=int, help="pool size (default 5000)")
    _common(p)
    return parser


def _config(args: argparse.Namespace, overrides: dict) -> PipelineConfig:
    common = {"seed": args.seed, "spark.master": args.master}
    return load_config(args.config, {**common, **overrides})


def _spark(cfg: PipelineConfig):
    from pipeline.spark import get_spark

    return get_spark(cfg.spark)


def cmd_ingest(args: argparse.Namespace) -> int:
    from pipeline.api import run_ingest

    overrides = {
        "ingest.format": args.format,
        "ingest.text_col": args.text_col,
        "ingest.url_col": args.url_col,
        "ingest.uid_col": args.uid_col,
        "ingest.max_text_chars": args.max_text_chars,
    }
    return _stage(args, overrides, run_ingest, args.input)


def _stage(args: argparse.Namespace, overrides: dict, runner, *inputs) -> int:
    from pipeline.runs import Run, check_outside

    for source in inputs:
        if source:
            check_outside(args.output, source, pool=args.command == "ingest")
    cfg = _config(args, overrides)
    spark = _spark(cfg)
    Run(spark, args.output).write_run_json(cfg.to_dict(), cfg.seed, [args.command, *sys.argv[1:]])
    result = runner(spark, *inputs, args.output, cfg, force=args.force)
    print(json.dumps(result.stats, indent=2, sort_keys=True, default=str))
    return 0


def cmd_match(args: argparse.Namespace) -> int:
    from pipeline.api import run_match

    overrides = {"match.metadata": args.metadata, "match.mode": args.mode, "match.backend": args.backend}
    return _stage(args, overrides, run_match, args.input)


def cmd_count(args: argparse.Namespace) -> int:
    from pipeline.api import run_count

    return _stage(args, {"count.concepts": args.concepts}, run_count, args.input)


def cmd_balance(args: argparse.Namespace) -> int:
    from pipeline.api import run_balance

    overrides = {"balance.t": args.t, "balance.tail_fraction": args.tail_fraction}
    return _stage(args, overrides, run_balance, args.input, args.counts)


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate the demo pool, then `curate run` on it (every enabled stage redone: the pool is new)."""
    import contextlib
    import dataclasses

    cfg = _config(args, {"demo.rows": args.rows})
    out = os.path.abspath(args.output)
    with contextlib.ExitStack() as stack:
        base_url = "http://127.0.0.1:8765/images"
        if "download" in cfg.run.stages:
            # The download stage fetches the demo images over HTTP from this machine: serve the
            # pool folder on 127.0.0.1 (port 8765 when free) and allow exactly that address.
            server = _serve_demo(stack, os.path.join(out, "pool"))
            base_url = server.url("images")
            hosts = tuple(dict.fromkeys((*cfg.download.allow_hosts, "127.0.0.1")))
            cfg = dataclasses.replace(cfg, download=dataclasses.replace(cfg.download, allow_hosts=hosts))
        return _demo_run(args, cfg, out, base_url)


def _serve_demo(stack, pool_dir: str):
    from pipeline.localserve import serve_folder

    os.makedirs(pool_dir, exist_ok=True)
    try:
        return stack.enter_context(serve_folder(pool_dir, port=8765))
    except OSError:
        log.warning("port 8765 is busy: serving the demo images on an ephemeral port (uids depend on the URL)")
        return stack.enter_context(serve_folder(pool_dir, port=0))


def _demo_run(args: argparse.Namespace, cfg: PipelineConfig, out: str, base_url: str) -> int:
    import dataclasses

    from pipeline.demo import generate_pool, write_concepts
    from pipeline.metadata import build_metadata, write_metadata
    from pipeline.runner import describe, run_pipeline, write_resolved_config

    pool = generate_pool(os.path.join(out, "pool"), cfg.demo, seed=cfg.seed, base_url=base_url)
    metadata = os.path.join(out, "metadata.json")
    if not os.path.exists(metadata):
        log.info("building demo metadata: numbers 0-99 + WordNet 3.0 lemma names (once; reused on later demos)")
        write_metadata(build_metadata(numbers=True, wordnet=True), metadata)
    concepts = write_concepts(os.path.join(out, "pool", "concepts.json"))
    cfg = dataclasses.replace(
        cfg,
        match=dataclasses.replace(cfg.match, metadata=cfg.match.metadata or metadata),
        count=dataclasses.replace(cfg.count, concepts=cfg.count.concepts or concepts),
        balance=cfg.balance if (cfg.balance.t or cfg.balance.tail_fraction) else dataclasses.replace(cfg.balance, tail_fraction=0.3),
        run=dataclasses.replace(cfg.run, input=pool.path, output=os.path.join(out, "run")),
    )
    config = write_resolved_config(cfg, os.path.join(out, "pipeline.yaml"))
    spark = _spark(cfg)
    result = run_pipeline(spark, cfg, force=True, command=["demo", *sys.argv[1:]])
    print(f"demo pool:  {pool.path} ({pool.rows} rows, images in {pool.images})")
    for line in describe(result):
        print(line)
    print(f"config:     {config}  (`curate run --config` it: complete stages are skipped)")
    return 0


COMMANDS = {"ingest": cmd_ingest, "match": cmd_match, "count": cmd_count, "balance": cmd_balance, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        command = getattr(args, "func", None) or COMMANDS[args.command]
        return command(args)
    except USER_ERRORS as exc:
        print(f"curate {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        message = no_room_message(exc)
        if message is None:
            raise
        print(f"curate {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
