"""Worldwide curation (MetaCLIP 2), Spark-free: per-language metadata, matching and thresholds.

A caption is matched only against the metadata list of its own language, with entries padded
by MetaCLIP 2's rule (no space beside a character of a script written without spaces, see
`pipeline.kernels.matcher.pad_entry`). Counts are per language. English keeps a given t; its
tail share p (matches in entries with count < t over all English matches) sets every other
language's t: the count in that language's sorted counts whose cumulative share is nearest
to p. Entry probabilities are then 1 below t and t / count above, as in MetaCLIP 1.

Entry ids are global: languages in code order, each language's entries in file order, the id
is the position in that concatenation. So per-language counts, probabilities and the hashed
draws of `pipeline.kernels.sampling` all work on one flat vector.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.kernels.matcher import Matcher

log = logging.getLogger(__name__)

OTHER = "other"
REFERENCE = "en"
# An automaton holds about 0.25 kB per short pattern (bench/bench_match_worldwide.py), more for
# long ones; this keeps an executor's Python worker within about 1 GB of automata however many
# languages its partitions carry.
MAX_PATTERNS = 2_000_000


@dataclass(frozen=True)
class LanguageMetadata:
    """Every language's entries in one list; language i owns ids starts[i] .. starts[i+1]-1."""

    languages: tuple[str, ...]
    entries: tuple[str, ...]
    starts: tuple[int, ...]

    def __post_init__(self) -> None:
        if list(self.languages) != sorted(set(self.languages)):
            raise ValueError("languages must be unique and sorted")
        if len(self.starts) != len(self.languages) + 1 or self.starts[0] != 0 or self.starts[-1] != len(self.entries):
            raise ValueError("starts must run from 0 to len(entries), one more than the languages")

    @classmethod
    def from_lists(cls, lists: Mapping[str, Sequence[str]]) -> LanguageMetadata:
        languages = tuple(sorted(lists))
        entries: list[str] = []
        starts = [0]
        for lang in languages:
            entries.extend(lists[lang])
            starts.append(len(entries))
        return cls(languages, tuple(entries), tuple(starts))

    def span(self, lang: str) -> tuple[int, int]:
        """(first id, one past the last id) of a language's entries."""
        i = self.languages.index(lang)
        return self.starts[i], self.starts[i + 1]

    def entries_of(self, lang: str) -> tuple[str, ...]:
        first, stop = self.span(lang)
        return self.entries[first:stop]

    def language_of_ids(self, ids: np.ndarray) -> np.ndarray:
        """The language code of each global entry id."""
        which = np.searchsorted(np.asarray(self.starts[1:]), np.asarray(ids), side="right")
        return np.asarray(self.languages, dtype=object)[which]

    def to_json(self) -> list[dict]:
        """languages.json: one record per language, in id order."""
        return [
            {"language": lang, "first": self.starts[i], "entries": self.starts[i + 1] - self.starts[i]}
            for i, lang in enumerate(self.languages)
        ]

    @classmethod
    def from_json(cls, records: Sequence[Mapping], entries: Sequence[str]) -> LanguageMetadata:
        languages = tuple(r["language"] for r in records)
        starts = tuple([*(int(r["first"]) for r in records), len(entries)])
        return cls(languages, tuple(entries), starts)


def load_language_metadata(path: str, per_language: bool = True) -> LanguageMetadata:
    """A folder of <lang>.json (or <lang>.txt) lists, or with `per_language` one JSON {lang: [entries]}.

    Each language's list is checked as a single list is (strings, non-blank, unique within the
    language); the same string may appear in two languages under two ids.
    """
    from pipeline.concepts.metadata import MetadataError, load_concepts

    p = Path(path)
    lists: dict[str, Sequence[str]] = {}
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".json", ".txt") and not f.name.startswith((".", "_")))
        for f in files:
            lang = f.stem
            if lang in lists:
                raise MetadataError(f"{path}: two lists for language {lang!r} ({lang}.json and {lang}.txt)")
            concepts = load_concepts(str(f))
            if concepts.synonyms is not None:
                raise MetadataError(f"{f}: a per-language list must be a JSON list of strings or a text file")
            lists[lang] = concepts.entries
        if not lists:
            raise MetadataError(f"{path}: no <language>.json or <language>.txt lists in this folder")
    else:
        if not per_language:
            raise ValueError("a single metadata file is per-language only with per_language=True")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MetadataError(f"{path}: cannot read a {{language: [entries]}} JSON ({exc})") from None
        if not isinstance(data, dict) or not data:
            raise MetadataError(f"{path}: expected a JSON object {{language: [entries]}}")
        from pipeline.concepts.metadata import _check_entries

        for lang, entries in data.items():
            if not isinstance(entries, list):
                raise MetadataError(f"{path}: language {lang!r} holds {type(entries).__name__}, not a list of entries")
            lists[lang] = _check_entries(entries, f"{path}[{lang}]")
    for lang in lists:
        if not lang or lang != lang.strip() or "/" in lang:
            raise MetadataError(f"{path}: {lang!r} is not a language code")
    return LanguageMetadata.from_lists(lists)


def metadata_language(code: str | None, languages: Sequence[str] | frozenset, language_map: Mapping[str, str] | None = None) -> str:
    """The metadata list a caption of language `code` is matched against.

    The map first, then the code itself, then its base ("zh-Hans", "pt_BR" -> "zh", "pt"),
    lower-cased; a code with no list (or no code) goes to "other".
    """
    if code is None or not code.strip():
        return OTHER
    if language_map and code in language_map:
        return language_map[code]
    if code in languages:
        return code
    base = code.strip().replace("_", "-").split("-")[0].lower()
    if language_map and base in language_map:
        return language_map[base]
    return base if base in languages else OTHER


class WorldMatcher:
    """One `Matcher` per language, built when a batch first holds that language.

    Automata are kept least-recently-used first out while their patterns exceed `max_patterns`
    (the one in use always stays), so memory is bounded with hundreds of languages.
    """

    def __init__(
        self, meta: LanguageMetadata, mode: str = "metaclip", backend: str = "ahocorasick_rs", max_patterns: int = MAX_PATTERNS
    ) -> None:
        self.meta = meta
        self.mode = mode
        self.backend = backend
        self.max_patterns = max_patterns
        self._matchers: OrderedDict[str, Matcher] = OrderedDict()
        self.builds = 0

    @property
    def patterns_held(self) -> int:
        return sum(len(m.patterns) for m in self._matchers.values())

    def matcher(self, lang: str) -> Matcher:
        m = self._matchers.pop(lang, None)
        if m is None:
            m = Matcher(self.meta.entries_of(lang), self.mode, self.backend, padding="cjk_aware")
            self.builds += 1
            log.info("built the %s matcher over %d entries", lang, m.n_entries)
            while self._matchers and self.patterns_held + len(m.patterns) > self.max_patterns:
                self._matchers.popitem(last=False)
        self._matchers[lang] = m
        return m

    def match_batch(self, texts: Sequence[str | None], languages: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Global entry ids per text (CSR, sorted per text); `languages` are metadata languages."""
        n = len(texts)
        if n != len(languages):
            raise ValueError(f"{n} texts but {len(languages)} languages")
        langs = np.asarray(languages, dtype=object)
        per = np.zeros(n, np.int64)
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        present = set(languages) & set(self.meta.languages)
        # Languages whose automaton is held go first, so a batch that needs more patterns than
        # the cap evicts only what it has used already; the rest in code order.
        held = [lang for lang in self._matchers if lang in present]
        for lang in held + sorted(present - set(held)):
            rows = np.flatnonzero(langs == lang)
            offsets, values = self.matcher(lang).match_batch([texts[i] for i in rows])
            first, _ = self.meta.span(lang)
            per[rows] = np.diff(offsets)
            parts.append((rows, offsets, values.astype(np.int64) + first))
        out_offsets = np.concatenate([[0], np.cumsum(per)])
        out = np.zeros(int(out_offsets[-1]), np.int32)
        for rows, offsets, values in parts:
            counts = np.diff(offsets)
            dest = np.repeat(out_offsets[rows], counts) + (np.arange(len(values)) - np.repeat(offsets[:-1], counts))
            out[dest] = values
        return out_offsets.astype(np.int32), out


_CACHE: dict[str, WorldMatcher] = {}
_LOCK = threading.Lock()


def get_world_matcher(
    key: str, meta: Callable[[], LanguageMetadata], mode: str, backend: str, max_patterns: int = MAX_PATTERNS
) -> WorldMatcher:
    """The process-wide matcher for one metadata set, kept across batches and tasks."""
    full = f"{key}:{mode}:{backend}:{max_patterns}"
    with _LOCK:
        matcher = _CACHE.get(full)
        if matcher is None:
            _CACHE.clear()  # one worldwide metadata set per process at a time
            matcher = _CACHE[full] = WorldMatcher(meta(), mode, backend, max_patterns)
        return matcher


# --------------------------------------------------------------------------- thresholds


def tail_share(counts: np.ndarray, t: float) -> float:
    """Share of all matches that fall in entries with count < t (MetaCLIP 2's p for a given t)."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    return float(counts[counts < t].sum() / total) if total > 0 else 0.0


def nearest_share_threshold(counts: np.ndarray, p: float) -> int:
    """MetaCLIP 2's t for a language: the sorted count whose cumulative share is nearest to p.

    Counts ascending (zeros included), share_k = (c_0 + ... + c_k) / total; t is c_k at the
    first k minimising |share_k - p|. A t of 0 (p below the share of the smallest counts) would
    give every entry probability 0 and drop the whole language; t is at least 1.
    """
    c = np.sort(np.asarray(counts, np.int64))
    total = c.sum()
    if total <= 0:
        raise ValueError("no entry of this language has a match; its t is undefined")
    share = np.cumsum(c) / float(total)
    return max(1, int(c[int(np.argmin(np.abs(share - p)))]))


def language_thresholds(
    counts: np.ndarray,
    meta: LanguageMetadata,
    t: float | None = None,
    tail_fraction: float | None = None,
    reference: str = REFERENCE,
    overrides: Mapping[str, float] | None = None,
) -> tuple[dict[str, float | None], float]:
    """t per metadata language and the tail share p that set them.

    With `t`: the reference language (English) takes t and p is its tail share. With
    `tail_fraction`: p is given and every language, the reference too, takes the nearest-share
    t. A language without any match gets None. `overrides` replace single languages' t.
    """
    if (t is None) == (tail_fraction is None):
        raise ValueError("give exactly one of t and tail_fraction")
    counts = np.asarray(counts, np.int64)
    if len(counts) != len(meta.entries):
        raise ValueError(f"{len(counts)} counts for {len(meta.entries)} entries")

    def of(lang: str) -> np.ndarray:
        first, stop = meta.span(lang)
        return counts[first:stop]

    by_lang: dict[str, float | None] = {}
    if t is not None:
        if reference not in meta.languages or of(reference).sum() == 0:
            raise ValueError(
                f"the reference language {reference!r} has no matches, so its tail share cannot set the other "
                "languages' t; give balance.tail_fraction (p) or balance.t_by_language"
            )
        p = tail_share(of(reference), t)
        by_lang[reference] = float(t)
    else:
        p = float(tail_fraction)  # type: ignore[arg-type]
    for lang in meta.languages:
        if lang in by_lang:
            continue
        by_lang[lang] = float(nearest_share_threshold(of(lang), p)) if of(lang).sum() > 0 else None
    for lang, value in (overrides or {}).items():
        if lang not in meta.languages:
            raise ValueError(f"t_by_language names {lang!r}, which has no metadata list ({', '.join(meta.languages)})")
        by_lang[lang] = float(value)
    return by_lang, p


def language_probabilities(counts: np.ndarray, meta: LanguageMetadata, t_by_language: Mapping[str, float | None]) -> np.ndarray:
    """Per global entry: 1 when count < t of its language, else t / count."""
    counts = np.asarray(counts, np.float64)
    p = np.ones(len(counts), np.float64)
    for lang in meta.languages:
        t = t_by_language.get(lang)
        if t is None:
            continue
        first, stop = meta.span(lang)
        c = counts[first:stop]
        head = c >= t
        p[first:stop][head] = t / c[head]
    return p
