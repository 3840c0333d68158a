"""The whole pipeline in one call: the enabled stages in order, complete ones skipped, accounting last."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import STAGES, PipelineConfig
from pipeline.errors import UserError
from pipeline.runs import Run, StageResult, check_outside

log = logging.getLogger(__name__)


class RunError(UserError):
    """`curate run` cannot start: a missing input, run folder, stage module or upstream output."""


# How to call one stage on one run folder: (module, spark, cfg, run_root, upstream stage folders, force).
Call = Callable[[Any, Any, PipelineConfig, str, list[str], bool], StageResult]


@dataclass(frozen=True)
class Stage:
    """One registry entry: where the runner lives, which outputs it reads, how to call it."""

    name: str
    module: str
    # One slot per input; a slot lists the stages that can fill it, nearest first. The first
    # one enabled in this run (else complete in the run folder) fills it. No slots: `run.input`.
    needs: tuple[tuple[str, ...], ...]
    call: Call
    # Whether the stage's rows flow on (its `data` holds uids and it writes a ledger).
    rows: bool = True


def _report(m, spark, cfg: PipelineConfig, root: str, ups: list[str], force: bool) -> StageResult:
    summary = m.run_report(spark, root)
    return StageResult("report", summary["reports_dir"], summary)


REGISTRY: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("ingest", "pipeline.api", (), lambda m, sp, c, r, u, f: m.run_ingest(sp, c.run.input, r, c, force=f)),
        Stage("match", "pipeline.api", (("ingest",),), lambda m, sp, c, r, u, f: m.run_match(sp, u[0], r, c, force=f)),
        Stage("count", "pipeline.api", (("match",),), lambda m, sp, c, r, u, f: m.run_count(sp, u[0], r, c, force=f), rows=False),
        Stage(
            "balance", "pipeline.api", (("match",), ("count",)),
            lambda m, sp, c, r, u, f: m.run_balance(sp, u[0], u[1], r, c, force=f),
        ),
        Stage(
            "download", "pipeline.download", (("balance", "match", "ingest"),),
            lambda m, sp, c, r, u, f: m.run_download(sp, u[0], r, c, force=f),
        ),
        Stage("embed", "pipeline.embed", (("download",),), lambda m, sp, c, r, u, f: m.run_embed(sp, u[0], r, c, force=f)),
        Stage("cluster", "pipeline.cluster", (("embed",),), lambda m, sp, c, r, u, f: m.run_cluster(sp, u[0], r, c, force=f)),
        Stage(
            "prune", "pipeline.prune", (("embed",), ("cluster",)),
            lambda m, sp, c, r, u, f: m.run_prune(sp, u[0], u[1], r, c, force=f),
        ),
        Stage("report", "pipeline.report", (("match",),), _report, rows=False),
    )
}
assert tuple(REGISTRY) == STAGES, "the registry must list every stage in pipeline order"


@dataclass
class PipelineResult:
    run_root: str
    results: dict[str, StageResult] = field(default_factory=dict)
    # The chain of ledger stages the final output came through, and check_accounting's summary.
    lineage: list[str] = field(default_factory=list)
    accounting: dict[str, Any] | None = None
    seconds: float = 0.0


def _load(stage: Stage):
    """The module holding the stage's runner, imported only when the stage is enabled."""
    try:
        return importlib.import_module(stage.module)
    except ModuleNotFoundError as exc:
        if exc.name != stage.module:
            raise
        raise RunError(
            f"stage {stage.name} is enabled in run.stages but {stage.module} is not in this installation; "
            f"remove {stage.name} from run.stages (--stages)"
        ) from None


def _upstreams(run: Run, stage: Stage, enabled: Sequence[str]) -> list[str]:
    """The stage folder filling each input slot: enabled in this run first, else complete on disk."""
    chosen = []
    for slot in stage.needs:
        pick = next((s for s in slot if s in enabled), None)
        if pick is None:
            pick = next((s for s in slot if run.is_complete(s)), None)
            if pick is not None:
                log.info("%s: reading %s from an earlier run (not enabled now)", stage.name, run.stage_dir(pick))
        if pick is None:
            raise RunError(
                f"stage {stage.name} needs the output of {' or '.join(slot)}: add it to run.stages (--stages) "
                f"or run it into {run.root} first"
            )
        chosen.append(pick)
    return chosen


def check_run_folder(cfg: PipelineConfig) -> None:
    """The run folder lies outside the pool that ingest reads (checked before Spark starts, and again by run_pipeline)."""
    if cfg.run.output and cfg.run.input and "ingest" in cfg.run.stages:
        check_outside(cfg.run.output, cfg.run.input, pool=True, output_name="run.output", input_name="run.input")


def run_pipeline(
    spark, cfg: PipelineConfig, from_stage: str | None = None, force: bool = False, command: list[str] | None = None
) -> PipelineResult:
    """Run `cfg.run.stages` in pipeline order into `cfg.run.output`.

    A stage whose completion marker matches its input fingerprint and config is skipped.
    `from_stage` forces that stage and every later enabled one (`force`: every stage); once a stage recomputes,
    every later one recomputes too (their fingerprints name input folders, not contents).
    Ends with the ledger accounting over the chain of stages the final rows came through.
    """
    if not cfg.run.output:
        raise RunError("run.output: no run folder given; pass --output RUN or set run.output in the config")
    enabled = [s for s in STAGES if s in cfg.run.stages]
    if from_stage is not None and from_stage not in enabled:
        raise RunError(f"--from {from_stage}: not one of the enabled stages ({', '.join(enabled)})")
    if "ingest" in enabled and not cfg.run.input:
        raise RunError("run.input: no pool given for ingest; pass --input POOL or set run.input in the config")
    check_run_folder(cfg)
    started = time.time()
    root = cfg.run.output.rstrip("/")
    run = Run(spark, root)
    modules = {name: _load(REGISTRY[name]) for name in enabled}  # fail before any work
    run.write_run_json(cfg.to_dict(), cfg.seed, command or ["run"])
    out = PipelineResult(root)
    inputs_of: dict[str, list[str]] = {}
    for i, name in enumerate(enabled, 1):
        stage = REGISTRY[name]
        force = force or name == from_stage
        ups = _upstreams(run, stage, enabled)
        inputs_of[name] = ups
        if name == "report" and not force and run.fs.exists(f"{root}/reports/report.html"):
            log.info("run [%d/%d] report: up to date in %s/reports; skipping", i, len(enabled), root)
            out.results[name] = StageResult("report", f"{root}/reports", {}, skipped=True)
            continue
        log.info("run [%d/%d] %s%s", i, len(enabled), name, " (forced)" if force else "")
        t0 = time.time()
        result = stage.call(modules[name], spark, cfg, root, [run.stage_dir(u) for u in ups], force)
        out.results[name] = result
        log.info(
            "run [%d/%d] %s: %s in %.1fs", i, len(enabled), name, "skipped (complete)" if result.skipped else "done",
            time.time() - t0,
        )
        # Downstream fingerprints name this stage's folder, not its contents: redo them too.
        force = force or not result.skipped
    out.lineage = _lineage(run, enabled, inputs_of)
    if out.lineage and out.lineage[0] == "ingest":
        from pipeline.ledger import check_accounting

        out.accounting = check_accounting(spark, root, out.lineage)
        log.info(
            "run: accounting over %s: %d inputs, each with one terminal state; %d kept",
            " -> ".join(out.lineage), out.accounting["inputs"], out.accounting["kept"],
        )
    out.seconds = round(time.time() - started, 3)
    log.info("run: %d stages in %.1fs -> %s", len(enabled), out.seconds, root)
    return out


def _lineage(run: Run, enabled: list[str], inputs_of: dict[str, list[str]]) -> list[str]:
    """The row stages the last row stage's output came through, back to ingest, with a ledger."""
    row_stages = [s for s in enabled if REGISTRY[s].rows]
    if not row_stages:
        return []
    chain, name = [], row_stages[-1]
    while name is not None:
        chain.append(name)
        ups = inputs_of.get(name)
        if ups is None:  # an upstream from an earlier run: follow the registry's nearest complete choice
            slot = REGISTRY[name].needs[0] if REGISTRY[name].needs else ()
            ups = [next((s for s in slot if run.is_complete(s)), None)] if slot else []
        name = ups[0] if ups else None
    return [s for s in reversed(chain) if run.fs.exists(run.ledger_dir(s))]


def write_resolved_config(cfg: PipelineConfig, path: str) -> str:
    """Write `cfg` as a YAML file that `curate run --config` (or spark-submit jobs/run.py) takes."""
    import json
    import os

    import yaml

    plain = json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists, for YAML's safe dumper
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("# Resolved configuration of this run: `curate run --config THIS_FILE` reruns it.\n")
        yaml.safe_dump(plain, fh, sort_keys=False)
    return path


# --------------------------------------------------------------------------- summary

def describe(result: PipelineResult) -> list[str]:
    """One line per stage (the demo's and `curate run`'s summary), then the outputs."""
    root = result.run_root

    def rows(s: dict) -> str:
        return f"{s['rows_in']} in, {s['kept']} kept, {s['dropped_total']} dropped {s['dropped']}"

    lines = []
    for name, r in result.results.items():
        s = r.stats
        tag = f"{name}:".ljust(12)
        if name == "match":
            lines.append(f"{tag}{rows(s)} against {s['entries']} entries ({s['match_mode']})")
        elif name == "count":
            lines.append(f"{tag}{s['texts']} texts; per-entry counts in {root}/count/data, concepts in {root}/count/concepts")
        elif name == "balance":
            lines.append(
                f"{tag}{rows(s)}; t={s['t']:g} ({s['t_from']}), expected {s['expected_kept']:.0f} kept"
            )
        elif name == "report":
            continue
        elif "rows_in" in s:
            lines.append(f"{tag}{rows(s)}")
        else:
            lines.append(f"{tag}done ({r.path})")
        if r.skipped:
            lines[-1] += "  [complete; skipped]"
    last = result.lineage[-1] if result.lineage else None
    if last:
        lines.append(f"{'outputs:'.ljust(12)}{root}/{last}/data  (the curated subset: uid, text, ...)")
        lines.append(f"{'decisions:'.ljust(12)}{root}/decisions     (Parquet ledger, partitioned by stage)")
    if result.accounting:
        a = result.accounting
        lines.append(f"{'accounting:'.ljust(12)}each of {a['inputs']} input uids has exactly one terminal state; {a['kept']} kept")
    lines.append(f"{'run record:'.ljust(12)}{root}/run.json")
    if "report" in result.results:
        lines.append(
            f"{'report:'.ljust(12)}{root}/reports/report.html  (and datacard.md, concept_frequency.parquet, long_tail.json, plots)"
        )
    return lines


# --------------------------------------------------------------------------- CLI

def add_cli(subparsers: Any) -> None:
    """Register `run` on the `curate` command's subparsers."""
    from pipeline.cli import _common

    p = subparsers.add_parser(
        "run", help="run the configured stages in order into one run folder; complete stages are skipped"
    )
    p.add_argument("--input", help="the pool to ingest (overrides run.input)")
    p.add_argument("--output", help="the run folder (overrides run.output)")
    p.add_argument("--stages", help=f"comma-separated stages to run, in pipeline order (overrides run.stages; any of {','.join(STAGES)})")
    p.add_argument("--from", dest="from_stage", choices=STAGES, metavar="STAGE", help="redo this stage and every later one")
    _common(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    """`curate run`: the whole pipeline from one config file."""
    from pipeline.cli import _config, _spark

    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    cfg = _config(args, {"run.input": args.input, "run.output": args.output, "run.stages": stages})
    check_run_folder(cfg)
    spark = _spark(cfg)
    result = run_pipeline(spark, cfg, from_stage=args.from_stage, command=["run", *sys.argv[1:]])
    for line in describe(result):
        print(line)
    return 0
