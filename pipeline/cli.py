"""The `curate` command line, made from the stage registry: one subcommand per stage, plus run, demo, metadata.

A stage's flags are its config keys (`--max-text-chars` sets `ingest.max_text_chars`), its input
slots (`--input`, and `--counts`/`--clusters` where a stage has two), `--output` (always the run
folder) and `--force`. Each subcommand calls `execute()`, as the Python API does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing
from collections.abc import Sequence
from typing import Any

from pipeline import __version__
from pipeline.core.config import ConfigError
from pipeline.core.contracts import MissingColumnsError
from pipeline.core.errors import UserError, no_room_message
from pipeline.core.protocol import Stage
from pipeline.core.spark import JavaMissingError
from pipeline.registry import REGISTRY, STAGES, load_config

log = logging.getLogger("curate")

# Errors a person can act on: printed as one line, exit code 2. (Every project error that a
# person can fix derives from UserError or ValueError-based config/input errors.)
USER_ERRORS = (UserError, ConfigError, MissingColumnsError, JavaMissingError, FileNotFoundError)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (see configs/demo.yaml)")
    p.add_argument("--master", help="Spark master (default local[*]; ignored under spark-submit)")
    p.add_argument("--seed", type=int, help="random seed recorded in run.json (default 0)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


# --------------------------------------------------------------------------- flags from config fields


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_notes(cls: type) -> dict[str, str]:
    """The comment lines written above each field of a config dataclass: its flag's help."""
    import inspect
    import re

    notes: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        text = line.strip()
        if text.startswith("#"):
            pending.append(text.lstrip("# "))
            continue
        field_ = re.match(r"(\w+)\s*:", text)
        if field_ and pending:
            notes[field_.group(1)] = " ".join(pending)
        pending = []
    return notes


def config_flags(p: argparse.ArgumentParser, section: str, cls: type) -> None:
    """One flag per field of `cls`, named after it; its value overrides `<section>.<field>`."""
    hints = typing.get_type_hints(cls)
    notes = field_notes(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        hint = hints[f.name]
        args = typing.get_args(hint)
        inner = next((a for a in args if a is not type(None)), hint) if args and type(None) in args else hint
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_ = (notes.get(f.name, "") + f" [{section}.{f.name}" + (f"; default {default}]" if default not in (None, (), {}) else "]")).strip()
        help_ = help_.replace("%", "%%")
        names = [_flag(f.name), *f.metadata.get("aliases", ())]
        kw: dict[str, Any] = {"dest": f"cfg:{f.name}", "default": None, "help": help_}
        choices = getattr(cls, f.name.upper() + "S", None) or f.metadata.get("choices")
        if inner is bool:
            p.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(inner) is tuple:
            p.add_argument(*names, action="extend", nargs="+", metavar=f.name.rstrip("s").upper(), **kw)
        elif typing.get_origin(inner) is dict:
            continue  # mappings are set in the config file
        else:
            p.add_argument(*names, type=inner, choices=choices, metavar=None if choices else f.name.upper(), **kw)


def overrides_of(args: argparse.Namespace, section: str) -> dict[str, Any]:
    return {f"{section}.{k[4:]}": v for k, v in vars(args).items() if k.startswith("cfg:") and v is not None}


def add_stage(sub, spec: Stage) -> None:
    p = sub.add_parser(spec.name, help=spec.help, description=spec.help)
    for slot in spec.inputs:
        default = " (default: the run folder)" if slot.sources else ""
        p.add_argument(
            f"--{slot.flag}", *slot.aliases, dest=f"in:{slot.flag}", metavar=slot.flag.upper(), required=not slot.sources,
            help=slot.help + default,
        )
    p.add_argument("--output", *(("--run",) if spec.name == "report" else ()), required=True, help="the run folder")
    config_flags(p, spec.name, spec.config)
    p.add_argument("--force", action="store_true", help="redo the stage even if it is complete")
    _common(p)
    p.set_defaults(func=cmd_stage, stage=spec)


def cmd_stage(args: argparse.Namespace) -> int:
    """`curate <stage>`: the stage through execute(), its stats printed as JSON."""
    from pipeline.core.folder import RunFolder, check_outside
    from pipeline.core.protocol import execute

    spec: Stage = args.stage
    inputs = {k[3:]: v for k, v in vars(args).items() if k.startswith("in:")}
    for slot in spec.inputs:  # before Spark starts: a run folder inside what the stage reads
        if inputs.get(slot.flag):
            check_outside(args.output, inputs[slot.flag], pool=not slot.sources)
    cfg = _config(args, overrides_of(args, spec.name))
    spark = _spark(cfg)
    result = execute(spec, RunFolder(spark, args.output), cfg, inputs, force=args.force, command=[spec.name, *sys.argv[1:]])
    print(json.dumps(result.stats, indent=2, sort_keys=True, default=str))
    return 0


# --------------------------------------------------------------------------- run, demo, metadata


def add_run(sub) -> None:
    p = sub.add_parser("run", help="run the configured stages in order into one run folder; complete stages are skipped")
    p.add_argument("--input", help="the pool to ingest (overrides run.input)")
    p.add_argument("--output", help="the run folder (overrides run.output)")
    p.add_argument("--stages", help=f"comma-separated stages to run, in pipeline order (overrides run.stages; any of {','.join(STAGES)})")
    p.add_argument("--from", dest="from_stage", choices=STAGES, metavar="STAGE", help="redo this stage and every later one")
    _common(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    """`curate run`: the whole pipeline from one config file."""
    from pipeline.api import check_run_folder, describe, run_pipeline

    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    cfg = _config(args, {"run.input": args.input, "run.output": args.output, "run.stages": stages})
    check_run_folder(cfg)
    spark = _spark(cfg)
    result = run_pipeline(spark, cfg, from_stage=args.from_stage, command=["run", *sys.argv[1:]])
    for line in describe(result):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pipeline.concepts.cli import add_cli as add_metadata

    parser = argparse.ArgumentParser(
        prog="curate",
        description="Curate web-scale image-text pools on Spark: " + ", ".join(STAGES) + ". "
        "Every stage reads and writes Parquet under one run folder and records each decision.",
    )
    parser.add_argument("--version", action="version", version=f"curate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for spec in REGISTRY:
        add_stage(sub, spec)
    add_run(sub)
    add_metadata(sub)
    p = sub.add_parser("demo", help="generate a demo pool and run the pipeline on it in Spark local mode")
    p.add_argument("--output", default="runs/demo", help="folder for the pool and the run (default runs/demo)")
    p.add_argument("--rows", type=int, help="pool size (default 5000)")
    _common(p)
    p.set_defaults(func=cmd_demo)
    return parser


def _config(args: argparse.Namespace, overrides: dict):
    common = {"seed": args.seed, "spark.master": args.master}
    return load_config(args.config, {**common, **overrides})


def _spark(cfg):
    from pipeline.core.spark import get_spark

    return get_spark(cfg.spark)


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


def _demo_run(args: argparse.Namespace, cfg, out: str, base_url: str) -> int:
    import dataclasses

    from pipeline.api import describe, run_pipeline, write_resolved_config
    from pipeline.concepts.metadata import build_metadata, write_metadata
    from pipeline.demo import generate_pool, write_concepts

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


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.core.logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args)
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
