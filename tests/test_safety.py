"""Static safety rules over the project's own code: no unpickling of user files, no unsafe YAML,
no shell strings, no archive members written to disk by their own names. Each rule is an AST check, so a comment or a string mentioning a call does not count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("pipeline", "jobs", "bench") for p in (ROOT / d).rglob("*.py"))


def _name(node: ast.AST) -> str:
    """Dotted name of a call target: np.load, torch.load, subprocess.run, ..."""
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return ""


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _archive(func: ast.AST, name: str) -> bool:
    """Whether a call's object looks like a tar or zip archive: `tar.x`, `tarfile.open(p).x`."""
    if any(word in name.lower() for word in ("tar", "zip", "archive")):
        return True
    owner = getattr(func, "value", None)
    return isinstance(owner, ast.Call) and _name(owner.func).startswith(("tarfile.", "zipfile."))


def violations(source: str, path: str = "<src>") -> list[str]:
    out = []
    tree = ast.parse(source, path)
    for node in ast.walk(tree):
        where = f"{path}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "marshal") for n in names):
                out.append(f"{where}: imports an unpickler ({', '.join(names)})")
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        last = name.rsplit(".", 1)[-1]
        if last == "load" and name.split(".")[0] in ("np", "numpy") and _true(_kw(node, "allow_pickle")):
            out.append(f"{where}: {name}(allow_pickle=True)")
        if name in ("torch.load",) and not _true(_kw(node, "weights_only")):
            out.append(f"{where}: torch.load without weights_only=True")
        if name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load"):
            out.append(f"{where}: {name} (use yaml.safe_load)")
        if name.startswith("subprocess.") and _true(_kw(node, "shell")):
            out.append(f"{where}: {name}(shell=True)")
        if name in ("os.system", "os.popen", "eval", "exec"):
            out.append(f"{where}: {name}")
        if last in ("extract", "extractall") and _archive(node.func, name):
            # Member names are untrusted (../, absolute paths): read members with extractfile.
            out.append(f"{where}: {name} writes archive members to disk by their names")
    return out


def test_the_rules_catch_what_they_should():
    bad = """
import pickle
import numpy as np, torch, yaml, subprocess, os
np.load(f, allow_pickle=True)
torch.load(path)
torch.load(path, weights_only=False)
yaml.load(text)
subprocess.run(f"spark-submit {x}", shell=True)
os.system("rm " + p)
tar.extractall(out_dir)
tarfile.open(p).extract(member, out_dir)
"""
    found = violations(bad)
    assert len(found) == 9, found
    good = """
import numpy as np, torch, yaml, subprocess
np.load(f)
np.load(f, allow_pickle=False)
torch.load(path, weights_only=True, map_location="cpu")
yaml.safe_load(text)
subprocess.run(["spark-submit", x], check=True)
tar.extractfile(member).read()
"""
    assert violations(good) == []


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_project_code_follows_the_rules(path):
    assert violations(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT))) == []
