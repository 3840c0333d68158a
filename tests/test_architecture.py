"""The shape of the code: one registry, no import cycles, kernels without Spark, stages without the CLI,
flags that are config keys, and no folder renamed by the project's own code."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from tests.pipeline_runs import ROOT

PACKAGE = ROOT / "pipeline"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """Every module of `pipeline` that `path` imports, at the top or inside a function, any branch."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from pipeline.core import reasons` imports the module pipeline.core.reasons
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != me and name != "pipeline":
                out.add(name)
    return out


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_the_import_graph_has_no_cycle():
    """Tarjan's strongly connected components over every import, those inside functions too."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_graph_sees_imports_inside_functions():
    """The walk above must see lazy imports, or it would miss most of the project's cycles."""
    assert "pipeline.stages.sources" in GRAPH["pipeline.stages.ingest"]  # imported inside run()
    assert "pipeline.concepts.metadata" in GRAPH["pipeline.stages.match"]  # inside plan()


def test_no_stage_kernel_or_core_module_imports_the_cli_the_api_or_the_registry():
    front = {"pipeline.cli", "pipeline.api", "pipeline.registry", "pipeline.demo", "pipeline.concepts.cli"}
    inner = [m for m in GRAPH if m.startswith(("pipeline.core", "pipeline.kernels", "pipeline.stages", "pipeline.concepts"))]
    assert len(inner) > 20
    bad = {m: sorted(GRAPH[m] & front) for m in inner if GRAPH[m] & front and m != "pipeline.concepts.cli"}
    assert bad == {}
    # Kernels stand alone: they import neither stages nor the stage protocol.
    kernels = [m for m in GRAPH if m.startswith("pipeline.kernels.")]
    bad = {m: sorted(i for i in GRAPH[m] if i.startswith(("pipeline.stages", "pipeline.core.protocol"))) for m in kernels}
    assert {m: v for m, v in bad.items() if v} == {}


def test_kernels_never_import_pyspark():
    kernels = sorted(m for m in MODULES if m.startswith("pipeline.kernels."))
    assert {"pipeline.kernels.matcher", "pipeline.kernels.sampling", "pipeline.kernels.kmeans", "pipeline.kernels.semdedup",
            "pipeline.kernels.dbp", "pipeline.kernels.encoder", "pipeline.kernels.imageio", "pipeline.kernels.urlguard"} <= set(kernels)
    for name in kernels:
        tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(m == "pyspark" or m.startswith("pyspark.") for m in mods), f"{name} imports {mods}"
    # And at run time: importing every kernel loads no pyspark (nor through a project module).
    code = "import sys\n" + "".join(f"import {k}\n" for k in kernels) + "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyspark'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_no_folder_is_renamed_by_the_projects_code():
    """Renames go through RunFS.replace_file (one small file); nothing calls os.rename/replace or
    shutil.move on its own, and the only Hadoop rename is the one inside replace_file."""
    found = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                call = node.func.attr
                owner = ast.unparse(node.func.value)
                # (pandas' Series.rename renames an index; the filesystem calls are on an fs or a path)
                on_files = call == "rename" and any(w in owner.lower() for w in ("fs", "path", "dir"))
                if (owner, call) in {("os", "rename"), ("os", "replace"), ("shutil", "move"), ("fs", "move")} or on_files:
                    found.append(f"{name}:{node.lineno} {owner}.{call}")
    # metadata.write_json_atomic replaces one local JSON file; RunFS.replace_file renames one small file.
    assert sorted(f.split(":")[0] + " " + f.split(" ")[1] for f in found) == [
        "pipeline.concepts.metadata os.replace",
        "pipeline.core.fs fs.rename",
    ], found


# --------------------------------------------------------------------------- registry and CLI


def test_the_registry_is_the_pipeline_order_and_the_config_sections():
    from pipeline.registry import REGISTRY, STAGES, PipelineConfig

    assert STAGES == (
        "ingest", "match", "count", "balance", "download", "embed", "filter", "cluster", "prune", "export", "report",
    )
    fields = [f.name for f in dataclasses.fields(PipelineConfig)]
    assert fields == ["seed", "spark", *STAGES, "demo", "run"]
    for stage in REGISTRY:
        # Each stage's config class is kept beside its logic, in its own module.
        assert stage.config.__module__ == stage.run.__module__ == f"pipeline.stages.{stage.name}"
        assert dataclasses.is_dataclass(stage.config) and stage.config.__dataclass_params__.frozen
        # Upstream slots name only earlier stages.
        for slot in stage.inputs:
            assert all(STAGES.index(s) < STAGES.index(stage.name) for s in slot.sources), (stage.name, slot)
        assert (ROOT / "jobs" / f"{stage.name}.py").is_file()


def _sample(hint):
    """A value of the field's type that differs from any default, as a command-line string."""
    inner = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if type(None) in typing.get_args(hint) else hint
    return {int: (["7"], 7), float: (["0.25"], 0.25), str: (["x-y"], "x-y")}.get(inner)


@pytest.mark.parametrize(
    "name", ["ingest", "match", "count", "balance", "download", "embed", "filter", "cluster", "prune", "export", "report"]
)
def test_every_config_key_of_a_stage_is_a_flag_of_its_command(name):
    from pipeline.cli import build_parser, overrides_of
    from pipeline.registry import BY_NAME

    spec = BY_NAME[name]
    hints = typing.get_type_hints(spec.config)
    parser = build_parser()
    seen = 0
    for f in dataclasses.fields(spec.config):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        if typing.get_origin(hint) is dict:
            continue
        choices = getattr(spec.config, f.name.upper() + "S", None)
        if hint is bool:
            argv, want = [flag], True
        elif typing.get_origin(hint) is tuple:
            argv, want = [flag, "a", flag, "b"], ["a", "b"]
        elif choices:
            argv, want = [flag, choices[-1]], choices[-1]
        else:
            sample = _sample(hint)
            assert sample is not None, f"{name}.{f.name}: no flag type for {hint}"
            argv, want = [flag, *sample[0]], sample[1]
        args = parser.parse_args([name, "--output", "RUN", *(["--input", "POOL"] if name == "ingest" else []), *argv])
        assert overrides_of(args, name) == {f"{name}.{f.name}": want}, flag
        seen += 1
    assert seen == len([f for f in dataclasses.fields(spec.config) if typing.get_origin(hints[f.name]) is not dict])
    # --output is the run folder for every stage; --input the first slot.
    args = parser.parse_args([name, "--output", "RUN", "--input", "IN"]) if spec.inputs else parser.parse_args([name, "--output", "RUN"])
    assert args.output == "RUN"


def test_report_takes_output_like_every_stage_and_run_as_its_old_name():
    from pipeline.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["report", "--output", "R"]).output == parser.parse_args(["report", "--run", "R"]).output == "R"
    assert parser.parse_args(["download", "--output", "R", "--allow-host", "127.0.0.1"]).__dict__["cfg:allow_hosts"] == ["127.0.0.1"]
    assert vars(parser.parse_args(["embed", "--output", "R", "--npz", "x.npz"]))["in:input"] == "x.npz"
