"""The Python API: one stage (`run_stage`) or the whole pipeline (`run_pipeline`), both through `execute()`.

`curate <stage>`, `jobs/<stage>.py`, `curate run`, the Airflow DAG and these functions are the
same call. The per-stage shorthands (`run_ingest(spark, pool, run_root, cfg)`, ...) take the
stage's inputs positionally, in the order its registry entry lists them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.errors import UserError
from pipeline.core.folder import RunFolder, check_outside
from pipeline.core.protocol import StageResult, execute
from pipeline.registry import BY_NAME, REGISTRY, STAGES, stage

log = logging.getLogger(__name__)


class RunError(UserError):
    """`curate run` cannot start: a missing input, run folder or upstream output."""


def run_stage(
    spark, name: str, run_root: str, cfg, inputs: dict[str, str | None] | None = None, force: bool = False,
    command: list[str] | None = None,
) -> StageResult:
    """Run one stage into `run_root`; `inputs` by flag (`input`, `counts`, `clusters`; default: the run folder)."""
    return execute(stage(name), RunFolder(spark, run_root), cfg, inputs, force=force, command=command)


def _shorthand(name: str):
    flags = [slot.flag for slot in BY_NAME[name].inputs]

    def call(spark, *args, force: bool = False) -> StageResult:
        if len(args) != len(flags) + 2:
            raise TypeError(f"run_{name}(spark, {', '.join(flags + ['run_root', 'cfg'])}, force=False)")
        *paths, run_root, cfg = args
        return run_stage(spark, name, run_root, cfg, dict(zip(flags, paths, strict=True)), force=force)

    call.__name__ = call.__qualname__ = f"run_{name}"
    call.__doc__ = f"The {name} stage: run_{name}(spark, {', '.join(flags + ['run_root', 'cfg'])}, force=False)."
    return call


run_ingest = _shorthand("ingest")
run_match = _shorthand("match")
run_count = _shorthand("count")
run_balance = _shorthand("balance")
run_download = _shorthand("download")
run_embed = _shorthand("embed")
run_filter = _shorthand("filter")
run_cluster = _shorthand("cluster")
run_prune = _shorthand("prune")
run_export = _shorthand("export")
run_report = _shorthand("report")


# --------------------------------------------------------------------------- the whole pipeline


@dataclass
class PipelineResult:
    run_root: str
    results: dict[str, StageResult] = field(default_factory=dict)
    # The chain of ledger stages the final output came through, and check_accounting's summary.
    lineage: list[str] = field(default_factory=list)
    accounting: dict[str, Any] | None = None
    seconds: float = 0.0


def _upstreams(run: RunFolder, name: str, enabled: Sequence[str]) -> dict[str, str]:
    """The stage folder filling each input slot: enabled in this run first, else complete on disk."""
    chosen = {}
    for slot in BY_NAME[name].inputs:
        if not slot.sources:
            continue
        pick = next((s for s in slot.sources if s in enabled), None)
        if pick is None:
            pick = next((s for s in slot.sources if run.is_complete(s)), None)
            if pick is not None:
                log.info("%s: reading %s from an earlier run (not enabled now)", name, run.stage_dir(pick))
        if pick is None and slot.optional:
            continue
        if pick is None:
            raise RunError(
                f"stage {name} needs the output of {' or '.join(slot.sources)}: add it to run.stages (--stages) "
                f"or run it into {run.root} first"
            )
        chosen[slot.flag] = pick
    return chosen


def check_run_folder(cfg) -> None:
    """The run folder lies outside the pool that ingest reads (checked before Spark starts, and again by run_pipeline)."""
    if cfg.run.output and cfg.run.input and "ingest" in cfg.run.stages:
        check_outside(cfg.run.output, cfg.run.input, pool=True, output_name="run.output", input_name="run.input")


def run_pipeline(spark, cfg, from_stage: str | None = None, force: bool = False, command: list[str] | None = None) -> PipelineResult:
    """Run `cfg.run.stages` in pipeline order into `cfg.run.output`.

    A stage whose marker matches its fingerprint (its config and its inputs, including when each
    upstream output was made) is skipped, so a recomputed stage makes every later one recompute.
    `from_stage` forces that stage and every later one; `force` every stage.
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
    run = RunFolder(spark, root)
    for name in enabled:  # every slot can be filled before any work starts
        _upstreams(run, name, enabled)
    run.write_run_json(cfg.to_dict(), cfg.seed, command or ["run"])
    out = PipelineResult(root)
    picks: dict[str, dict[str, str]] = {}
    for i, name in enumerate(enabled, 1):
        picks[name] = _upstreams(run, name, enabled)
        inputs: dict[str, str | None] = {flag: run.stage_dir(s) for flag, s in picks[name].items()}
        if name == "ingest":
            inputs["input"] = cfg.run.input
        # --from redoes that stage and every later one (export included, which otherwise
        # refuses to replace a complete export of other inputs).
        force = force or name == from_stage
        log.info("run [%d/%d] %s%s", i, len(enabled), name, " (forced)" if force else "")
        t0 = time.time()
        result = execute(BY_NAME[name], run, cfg, inputs, force=force, record=False)
        out.results[name] = result
        log.info(
            "run [%d/%d] %s: %s in %.1fs", i, len(enabled), name, "skipped (complete)" if result.skipped else "done",
            time.time() - t0,
        )
    out.lineage = _lineage(run, enabled, picks)
    if out.lineage and out.lineage[0] == "ingest":
        from pipeline.core.ledger import check_accounting

        out.accounting = check_accounting(spark, root, out.lineage)
        log.info(
            "run: accounting over %s: %d inputs, each with one terminal state; %d kept",
            " -> ".join(out.lineage), out.accounting["inputs"], out.accounting["kept"],
        )
    out.seconds = round(time.time() - started, 3)
    log.info("run: %d stages in %.1fs -> %s", len(enabled), out.seconds, root)
    return out


def _lineage(run: RunFolder, enabled: list[str], picks: dict[str, dict[str, str]]) -> list[str]:
    """The row stages the last row stage's output came through, back to ingest, with a ledger."""
    row_stages = [s for s in enabled if BY_NAME[s].decides_rows]
    if not row_stages:
        return []
    chain: list[str] = []
    name: str | None = row_stages[-1]
    while name is not None:
        chain.append(name)
        up = picks.get(name)
        if up is None:  # an upstream from an earlier run: follow the registry's nearest complete choice
            slots = BY_NAME[name].inputs
            sources = slots[0].sources if slots else ()
            name = next((s for s in sources if run.is_complete(s)), None)
        else:
            name = up.get("input")
    return [s for s in reversed(chain) if run.fs.exists(run.ledger_dir(s))]


def write_resolved_config(cfg, path: str) -> str:
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


def describe(result: PipelineResult) -> list[str]:
    """One line per stage (the demo's and `curate run`'s summary), then the outputs."""
    root = result.run_root
    lines = []
    for name, r in result.results.items():
        s, spec = r.stats, BY_NAME[name]
        tag = f"{name}:".ljust(12)
        if name == "report":
            continue
        parts = []
        if "rows_in" in s:
            parts.append(f"{s['rows_in']} in, {s['kept']} kept, {s['dropped_total']} dropped {s['dropped']}")
        if spec.describe is not None:
            parts.append(spec.describe(s, root))
        line = tag + ("; ".join(parts) if parts else f"done ({r.path})")
        if name == "match":  # "N in, ... against E entries": one clause
            line = tag + " ".join(parts)
        lines.append(line + ("  [complete; skipped]" if r.skipped else ""))
    last = result.lineage[-1] if result.lineage else None
    if last:
        lines.append(f"{'outputs:'.ljust(12)}{root}/{last}/data  (the curated subset: uid, text, ...)")
        lines.append(f"{'decisions:'.ljust(12)}{root}/decisions     (Parquet ledger, partitioned by stage)")
    if result.accounting:
        a = result.accounting
        lines.append(f"{'accounting:'.ljust(12)}each of {a['inputs']} input uids has exactly one terminal state; {a['kept']} kept")
    lines.append(f"{'run record:'.ljust(12)}{root}/run.json")
    if "report" in result.results:
        lines.append(f"{'report:'.ljust(12)}{BY_NAME['report'].describe(result.results['report'].stats, root)}")
    return lines


__all__ = [
    "REGISTRY", "STAGES", "PipelineResult", "RunError", "StageResult", "check_run_folder", "describe",
    "run_pipeline", "run_stage", "write_resolved_config",
    *(f"run_{s.name}" for s in REGISTRY),
]
