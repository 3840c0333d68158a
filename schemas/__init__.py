"""The output contracts of each stage, as JSON files beside this module."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

# importlib.resources, not __file__: the package also runs from a zip (spark-submit --py-files).
_HERE = resources.files(__name__)


@cache
def load(name: str) -> dict:
    """The contract named `name` (the JSON file's stem)."""
    path = _HERE / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"no schema named {name!r}; known: {', '.join(names())}")
    return json.loads(path.read_text(encoding="utf-8"))


def names() -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in _HERE.iterdir() if p.name.endswith(".json"))
