"""The output contracts of each stage, as JSON files beside this module."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

_HERE = Path(__file__).resolve().parent


@cache
def load(name: str) -> dict:
    """The contract named `name` (the JSON file's stem)."""
    path = _HERE / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in _HERE.glob("*.json"))
        raise KeyError(f"no schema named {name!r}; known: {', '.join(known)}")
    return json.loads(path.read_text(encoding="utf-8"))


def names() -> list[str]:
    return sorted(p.stem for p in _HERE.glob("*.json"))
