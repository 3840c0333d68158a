"""Logging set-up for the command line: one line per event, quiet third parties."""

from __future__ import annotations

import logging
import sys

# Third parties that log on every run or every call (py4j: each message to the JVM at DEBUG;
# matplotlib: its font search; numexpr, when pandas finds it: its thread count at INFO):
# warnings and errors only.
NOISY = ("py4j", "pyspark", "PIL", "urllib3", "matplotlib", "numexpr")
# faiss's loader says at INFO which SIMD build it tried and loaded (five lines on each run that
# clusters or prunes): quiet, but shown with --verbose, where it helps.
NOISY_UNLESS_VERBOSE = ("faiss",)


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for noisy in NOISY_UNLESS_VERBOSE:
        logging.getLogger(noisy).setLevel(logging.NOTSET if verbose else logging.WARNING)
