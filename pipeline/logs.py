"""Logging set-up for the command line: one line per event, quiet third parties."""

from __future__ import annotations

import logging
import sys


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("py4j", "pyspark", "PIL", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
