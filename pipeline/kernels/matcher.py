"""MetaCLIP substring matching, Spark-free: the spacing rule, the batch matcher and its reference loop.

Semantics ("Demystifying CLIP Data", MetaCLIP's `substr_matching`): case-sensitive; the
text is padded with one space at each end, each of , . ; : ? ! and the backtick gets a
space on both sides, tab/newline/carriage return become spaces; entry e matches when
" " + e + " " is a substring of that spaced text. Each entry counts once per text.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import string
import threading
from collections.abc import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

MODES = ("metaclip", "case_insensitive")
BACKENDS = ("ahocorasick_rs", "pyahocorasick")
# "spaces": MetaCLIP 1, every entry is matched as " entry ". "cjk_aware": MetaCLIP 2, no space
# next to a character of a script written without spaces (or a punctuation mark), so a Chinese
# or Thai entry can match inside a run of text.
PADDINGS = ("spaces", "cjk_aware")
# MetaCLIP 2's "CJK or similar" code point blocks: CJK ideographs (unified, extensions A-F,
# compatibility, radicals, Kangxi, description characters), then Thai, Lao, Burmese, Khmer and
# Tibetan. Kana and Hangul are not in the published list, so a kana-initial entry needs a space.
_NO_SPACE_BLOCKS = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0xF900, 0xFAFF), (0x2E80, 0x2EFF), (0x2F00, 0x2FDF),
    (0x2FF0, 0x2FFF), (0x0E00, 0x0E7F), (0x0E80, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF),
    (0x0F00, 0x0FFF),
)
# ASCII punctuation plus the full-width and CJK marks MetaCLIP 2 lists.
_PUNCTUATION = frozenset(string.punctuation) | frozenset("，。、；：？！“”‘’（）【】《》〈〉「」『』～—")
# The marks MetaCLIP wraps in spaces; pipeline.concepts.metadata tokenises with them too, so this module
# must not import metadata.
WRAPPED = ",.;:?!`"
_SPACING = str.maketrans({**{c: f" {c} " for c in WRAPPED}, "\t": " ", "\n": " ", "\r": " "})
# Captions are joined with this separator for one automaton pass per batch. Spacing turns
# every newline inside a caption into a space, and patterns holding a newline can never
# match a spaced text, so no match can cross from one caption into the next.
_SEP = "\n"


def spaced(text: str, mode: str = "metaclip") -> str:
    """The text as MetaCLIP searches it."""
    if mode == "case_insensitive":
        text = text.lower()
    return " " + text.translate(_SPACING) + " "


def is_cjk_or_similar(char: str) -> bool:
    """MetaCLIP 2's test for a character that takes no space beside it in an entry's padding."""
    if char in _PUNCTUATION:
        return True
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in _NO_SPACE_BLOCKS)


def pad_entry(entry: str, padding: str = "spaces") -> str:
    """The pattern an entry is searched as in a spaced text."""
    if padding == "spaces" or not entry:
        return f" {entry} "
    if padding != "cjk_aware":
        raise ValueError(f"unknown entry padding {padding!r}; known: {', '.join(PADDINGS)}")
    head = "" if is_cjk_or_similar(entry[0]) else " "
    tail = "" if is_cjk_or_similar(entry[-1]) else " "
    return f"{head}{entry}{tail}"


def reference_match(text: str | None, entries: Sequence[str], mode: str = "metaclip") -> list[int]:
    """MetaCLIP's definition as a plain loop over all entries: slow, obviously right."""
    if text is None:
        return []
    s = spaced(text, mode)
    if mode == "case_insensitive":
        return [i for i, e in enumerate(entries) if f" {e.lower()} " in s]
    return [i for i, e in enumerate(entries) if f" {e} " in s]


def entries_fingerprint(entries: Sequence[str], mode: str) -> str:
    h = hashlib.sha256(mode.encode())
    for e in entries:
        h.update(e.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:24]


class Matcher:
    """An Aho-Corasick automaton over " entry " patterns, matching a batch of texts per call."""

    def __init__(
        self, entries: Sequence[str], mode: str = "metaclip", backend: str = "ahocorasick_rs", padding: str = "spaces"
    ) -> None:
        if padding not in PADDINGS:
            raise ValueError(f"unknown entry padding {padding!r}; known: {', '.join(PADDINGS)}")
        if mode not in MODES:
            raise ValueError(f"unknown match mode {mode!r}; known: {', '.join(MODES)}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown matcher backend {backend!r}; known: {', '.join(BACKENDS)}")
        self.mode = mode
        self.backend = backend
        self.n_entries = len(entries)
        # One pattern per distinct string; a pattern may stand for several entry ids.
        by_pattern: dict[str, list[int]] = {}
        for i, e in enumerate(entries):
            pattern = pad_entry(e.lower() if mode == "case_insensitive" else e, padding)
            if not pattern or _SEP in pattern or "\t" in pattern or "\r" in pattern:
                continue  # cannot occur in a spaced text (an empty pattern would match everywhere)
            by_pattern.setdefault(pattern, []).append(i)
        self.patterns = list(by_pattern)
        counts = np.fromiter((len(v) for v in by_pattern.values()), np.int64, len(by_pattern))
        self._simple = bool((counts == 1).all())
        self._ids = np.fromiter(itertools.chain.from_iterable(by_pattern.values()), np.int64, int(counts.sum()))
        self._id_offsets = np.concatenate([[0], np.cumsum(counts)])
        self._automaton = self._build()

    def _build(self):
        if not self.patterns:
            return None
        if self.backend == "ahocorasick_rs":
            try:
                import ahocorasick_rs
            except ImportError as exc:
                raise ImportError("the ahocorasick_rs backend needs `pip install ahocorasick-rs`") from exc
            return ahocorasick_rs.AhoCorasick(self.patterns)
        try:
            import ahocorasick
        except ImportError as exc:
            raise ImportError("the pyahocorasick backend needs `pip install pyahocorasick`") from exc
        automaton = ahocorasick.Automaton()
        for i, p in enumerate(self.patterns):
            automaton.add_word(p, i)
        automaton.make_automaton()
        return automaton

    def _find(self, haystack: str) -> np.ndarray:
        """(pattern index, end offset) of every match, overlapping ones included."""
        if self.backend == "ahocorasick_rs":
            try:
                found = self._automaton.find_matches_as_indexes(haystack, overlapping=True)
            except UnicodeEncodeError:
                # Lone surrogates (possible only from Python callers, never from Arrow) cannot
                # be encoded; U+FFFD keeps every offset, and no pattern holds a lone surrogate.
                haystack = haystack.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
                found = self._automaton.find_matches_as_indexes(haystack, overlapping=True)
            flat = np.fromiter(itertools.chain.from_iterable(found), np.int64, 3 * len(found)).reshape(-1, 3)
            return flat[:, [0, 2]]
        found = list(self._automaton.iter(haystack))
        flat = np.fromiter(itertools.chain.from_iterable(found), np.int64, 2 * len(found)).reshape(-1, 2)
        return flat[:, [1, 0]] + np.array([0, 1])  # pyahocorasick reports the last character's index

    def match_batch(self, texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """Entry ids per text as CSR arrays (offsets of length n+1, int32 values sorted per text)."""
        n = len(texts)
        if n == 0 or self._automaton is None:
            return np.zeros(n + 1, np.int32), np.zeros(0, np.int32)
        lower = self.mode == "case_insensitive"
        docs = [
            " " + (t.lower() if lower else t).translate(_SPACING) + " " if t is not None else "" for t in texts
        ]
        lengths = np.fromiter(map(len, docs), np.int64, n)
        starts = np.cumsum(lengths + 1) - lengths - 1
        hits = self._find(_SEP.join(docs))
        doc = np.searchsorted(starts, hits[:, 1] - 1, side="right") - 1
        pattern = hits[:, 0]
        if self._simple:
            ids = self._ids[pattern]
        else:
            per = self._id_offsets[pattern + 1] - self._id_offsets[pattern]
            doc = np.repeat(doc, per)
            first = np.repeat(self._id_offsets[pattern], per)
            step = np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)
            ids = self._ids[first + step]
        # sort + neighbour mask: same result as np.unique, many times faster on int64 keys
        keys = np.sort(doc * np.int64(self.n_entries) + ids)
        if len(keys):
            keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
        doc = keys // self.n_entries
        values = (keys - doc * self.n_entries).astype(np.int32)
        offsets = np.concatenate([[0], np.cumsum(np.bincount(doc, minlength=n))]).astype(np.int32)
        return offsets, values

    def match(self, text: str | None) -> list[int]:
        offsets, values = self.match_batch([text])
        return values.tolist()


_CACHE: dict[str, Matcher] = {}
_LOCK = threading.Lock()
# A worker may serve the main metadata and a downstream synonym list in turn (count stage);
# keep both, but no more: a 500k-entry automaton is a few hundred MB.
_CACHE_SIZE = 2


def get_matcher(
    key: str, entries: Callable[[], Sequence[str]], mode: str, backend: str, padding: str = "spaces"
) -> Matcher:
    """The process-wide matcher for `key`, built on first use and reused by every later batch and task."""
    full = f"{key}:{mode}:{backend}:{padding}"
    with _LOCK:
        matcher = _CACHE.pop(full, None)
        if matcher is None:
            matcher = Matcher(entries(), mode, backend, padding)
            log.info("built %s matcher over %d entries (%d patterns)", backend, matcher.n_entries, len(matcher.patterns))
            while len(_CACHE) >= _CACHE_SIZE:
                _CACHE.pop(next(iter(_CACHE)))  # least recently used first
        _CACHE[full] = matcher
        return matcher
