"""Every Python child of the test run starts here (tests/conftest.py puts this folder first on
PYTHONPATH): the network guard, when the run names its log, then the sitecustomize this shadows."""

import os
import sys


def _run_shadowed_sitecustomize() -> None:
    """A venv or distribution may have its own sitecustomize further down sys.path: run it too."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


if os.environ.get("CURATE_NETGUARD_LOG"):
    import curate_netguard

    curate_netguard.install()

_run_shadowed_sitecustomize()
