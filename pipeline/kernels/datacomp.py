"""DataComp's definitions, Spark-free: caption measures as its basic filter takes them (words from a
whitespace split, characters as Python counts them), and its uid lists (sorted u8,u8 pairs)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

HEX32 = re.compile("[0-9a-fA-F]{32}")


def caption_counts(texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(words, characters) per caption; a missing caption has 0 of each.

    Words are `len(text.split())`: runs of any Unicode whitespace separate them, so a caption of
    only whitespace has none.
    """
    words = np.fromiter((len(t.split()) if t else 0 for t in texts), np.int32, len(texts))
    chars = np.fromiter((len(t) if t else 0 for t in texts), np.int32, len(texts))
    return words, chars


def uid_pairs(uids: Sequence[str]) -> np.ndarray | None:
    """32-hex-digit uids as DataComp's sorted `dtype("u8,u8")` pairs (high, low 64 bits), or None
    when a uid is not 32 hex digits (then no such list can name it)."""
    out = np.empty(len(uids), np.dtype("u8,u8"))
    for i, uid in enumerate(uids):
        if not HEX32.fullmatch(uid):  # int(x, 16) alone would take "0x", "_" and signs
            return None
        out[i] = (int(uid[:16], 16), int(uid[16:], 16))
    out.sort()
    return out
