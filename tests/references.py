"""Independent references for tests, written from MISSION.md's and issue 16's definitions; nothing here imports pipeline/."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from fractions import Fraction

# MISSION.md, "MetaCLIP matching semantics (exact)": each of these gets a space on both sides.
METACLIP_WRAPPED_MARKS = (
    ",",  # comma
    ".",  # period
    ";",  # semicolon
    ":",  # colon
    "?",  # question mark
    "!",  # exclamation mark
    "`",  # backtick
)
# The same marks as pytest parameters with readable ids (comma, ..., backtick).
MARK_NAMES = ("comma", "period", "semicolon", "colon", "question", "exclamation", "backtick")
# ... and each of these becomes one space.
METACLIP_SPACE_CHARS = (
    "\t",  # tab
    "\n",  # newline
    "\r",  # carriage return
)


def metaclip_spaced(text: str, case_insensitive: bool = False) -> str:
    """The text as MetaCLIP searches it: marks wrapped in spaces, tab/newline/CR spaced, both ends padded."""
    if case_insensitive:
        text = text.lower()
    for mark in METACLIP_WRAPPED_MARKS:
        text = text.replace(mark, " " + mark + " ")
    for char in METACLIP_SPACE_CHARS:
        text = text.replace(char, " ")
    return " " + text + " "


def metaclip_match(text: str | None, entries: Sequence[str], case_insensitive: bool = False) -> list[int]:
    """Ids of the entries e for which " " + e + " " is a substring of the spaced text, ascending.

    A plain loop over all entries, so each entry (each id) counts at most once per text; an
    entry string listed under two ids gives both. No text (None) matches nothing. In
    case-insensitive mode both the text and the entries are lowercased.
    """
    if text is None:
        return []
    haystack = metaclip_spaced(text, case_insensitive)
    found = []
    for i, entry in enumerate(entries):
        if case_insensitive:
            entry = entry.lower()
        if " " + entry + " " in haystack:
            found.append(i)
    return found


# --------------------------------------------------------------------------- worldwide curation (issue 16)
# MetaCLIP 2's rules as issue 16 states them, as plain loops over literals; see the issue for the
# source (facebookresearch/MetaCLIP, metaclip/curation/substr_matching.py and curate.py).

# Code point ranges whose characters are written without spaces between words ("CJK-or-similar").
CJK_OR_SIMILAR_RANGES = (
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0x3400, 0x4DBF),  # Extension A
    (0x20000, 0x2A6DF),  # Extension B
    (0x2A700, 0x2B73F),  # Extension C
    (0x2B740, 0x2B81F),  # Extension D
    (0x2B820, 0x2CEAF),  # Extension E
    (0x2CEB0, 0x2EBEF),  # Extension F
    (0xF900, 0xFAFF),  # Compatibility Ideographs
    (0x2E80, 0x2EFF),  # Radicals Supplement
    (0x2F00, 0x2FDF),  # Kangxi Radicals
    (0x2FF0, 0x2FFF),  # Ideographic Description Characters
    (0x0E00, 0x0E7F),  # Thai
    (0x0E80, 0x0EFF),  # Lao
    (0x1000, 0x109F),  # Myanmar (Burmese)
    (0x1780, 0x17FF),  # Khmer
    (0x0F00, 0x0FFF),  # Tibetan
)
# Python's string.punctuation, written out.
ASCII_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
# The CJK marks issue 16 lists.
CJK_PUNCTUATION = "，。、；：？！“”‘’（）【】《》〈〉「」『』～—"


def cjk_or_similar(ch: str) -> bool:
    """Whether an entry may touch its neighbours at this end: a CJK-like script or punctuation."""
    code = ord(ch)
    for low, high in CJK_OR_SIMILAR_RANGES:
        if low <= code <= high:
            return True
    return ch in ASCII_PUNCTUATION or ch in CJK_PUNCTUATION


def padded_entry(entry: str, padding: str = "cjk_aware") -> str:
    """The entry as searched: "spaces" (MetaCLIP 1) pads both ends; "cjk_aware" pads an end only if
    that end's character is not CJK-or-similar."""
    if padding == "spaces":
        return " " + entry + " "
    assert padding == "cjk_aware", padding
    out = entry
    if entry and not cjk_or_similar(entry[0]):
        out = " " + out
    if entry and not cjk_or_similar(entry[-1]):
        out = out + " "
    return out


def padded_match(text: str | None, entries: Sequence[str], padding: str = "cjk_aware") -> list[int]:
    """Ids of the entries whose padded form is a substring of the MetaCLIP-spaced text, ascending."""
    if text is None:
        return []
    haystack = metaclip_spaced(text)
    found = []
    for i, entry in enumerate(entries):
        if padded_entry(entry, padding) in haystack:
            found.append(i)
    return found


def global_entries(per_language: dict[str, Sequence[str]]) -> list[tuple[str, str]]:
    """(language, entry) by global id: languages sorted by code, each language's entries in file order."""
    out = []
    for language in sorted(per_language):
        for entry in per_language[language]:
            out.append((language, entry))
    return out


def world_match(text: str | None, metadata_language: str, per_language: dict[str, Sequence[str]]) -> list[int]:
    """Global ids of the entries of the text's own metadata language that match it (cjk_aware padding)."""
    if text is None:
        return []
    haystack = metaclip_spaced(text)
    found = []
    for i, (language, entry) in enumerate(global_entries(per_language)):
        if language == metadata_language and padded_entry(entry, "cjk_aware") in haystack:
            found.append(i)
    return found


def metadata_language_of(code: str | None, languages: Sequence[str], language_map: dict[str, str] | None = None) -> str:
    """The list a caption is matched against: the map, the code itself, its part before - or _ lowercased, else "other"."""
    if code is None:
        return "other"
    if language_map and code in language_map:
        return language_map[code]
    if code in languages:
        return code
    base = code.replace("_", "-").split("-")[0].lower()
    if base in languages:
        return base
    return "other"


def world_counts(matched: Sequence[Sequence[int]], n_entries: int) -> list[int]:
    """Texts containing each global entry id (an entry only ever matches texts of its own language)."""
    counts = [0] * n_entries
    for ids in matched:
        for i in set(ids):
            counts[i] += 1
    return counts


def ref_tail_share(counts: Sequence[int], t: int) -> Fraction:
    """Share of all matches that falls in entries with count < t, exactly."""
    total = sum(counts)
    return Fraction(sum(c for c in counts if c < t), total)


def ref_nearest_share_threshold(counts: Sequence[int], p: Fraction | float) -> int | None:
    """The sorted count whose cumulative share is nearest to p (first on ties), at least 1; None when nothing matched.

    MetaCLIP 2's p_to_t can return 0 (p below the share of the smallest counts, zeros included),
    which gives every entry probability 0 and drops the language; curate takes 1 there (README).
    """
    ordered = sorted(counts)
    total = sum(ordered)
    if total == 0:
        return None
    p = Fraction(p)
    best_k, best_gap, running = 0, None, 0
    for k, c in enumerate(ordered):
        running += c
        gap = abs(Fraction(running, total) - p)
        if best_gap is None or gap < best_gap:
            best_k, best_gap = k, gap
    return max(1, ordered[best_k])


def ref_language_thresholds(
    counts_by_language: dict[str, Sequence[int]],
    t: int | None = None,
    tail_fraction: float | None = None,
    reference: str = "en",
    overrides: dict[str, int] | None = None,
) -> tuple[dict[str, int | None], Fraction]:
    """({language: t}, p): the reference language at t and the rest by nearest share to its tail share p;
    with tail_fraction, p is given and every language takes the nearest-share rule; overrides win."""
    if tail_fraction is not None:
        p = Fraction(tail_fraction)
        t_by = {lang: ref_nearest_share_threshold(c, p) for lang, c in counts_by_language.items()}
    else:
        p = ref_tail_share(counts_by_language[reference], t)
        t_by = {}
        for lang, c in counts_by_language.items():
            t_by[lang] = t if lang == reference else ref_nearest_share_threshold(c, p)
    for lang, value in (overrides or {}).items():
        t_by[lang] = value
    return t_by, p


def entry_probability(count: int, t: int | None) -> float:
    """1 when count < t, else t / count."""
    if t is None or count < t:
        return 1.0
    return t / count


# MetaCLIP's draw as pipeline/kernels/sampling.py `uniforms` and `uid_hashes` document it, on Python ints:
# u = splitmix64(splitmix64(uid_hash ^ splitmix64(seed)) ^ entry * golden) >> 11 / 2^53, uid_hash = the
# first 8 bytes of BLAKE2b(uid, UTF-8) read little-endian.
MASK64 = 0xFFFFFFFFFFFFFFFF
GOLDEN64 = 0x9E3779B97F4A7C15


def splitmix64_int(x: int) -> int:
    """The SplitMix64 finaliser on one 64-bit integer."""
    z = (x + GOLDEN64) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def uid_hash_int(uid: str) -> int:
    return int.from_bytes(hashlib.blake2b(uid.encode("utf-8"), digest_size=8).digest(), "little")


def uniform_draw(seed: int, uid: str, entry_id: int) -> float:
    """u in [0, 1) for one (uid, global entry id) pair."""
    a = splitmix64_int(seed & MASK64)
    b = splitmix64_int(uid_hash_int(uid) ^ a)
    c = splitmix64_int(b ^ ((entry_id * GOLDEN64) & MASK64))
    return (c >> 11) / 2**53


def kept_by_draw(seed: int, uid: str, entry_ids: Sequence[int], p: Sequence[float]) -> bool:
    """A text is kept when some matched entry i draws u < p_i."""
    for i in entry_ids:
        if uniform_draw(seed, uid, i) < p[i]:
            return True
    return False


def image_uid_of(url: str | None = None, image_hash: str | None = None) -> str:
    """First 32 hex digits of sha256("u:" + url), or of sha256("h:" + hash)."""
    key = "u:" + url if url is not None else "h:" + image_hash
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def chosen_alt_texts(images: dict[str, Sequence[str]], hash_of_uid: dict[str, int]) -> dict[str, str]:
    """{image: the uid with the smallest (hash, uid)} over each image's matched texts."""
    chosen = {}
    for image, uids in images.items():
        best = None
        for uid in uids:
            key = (hash_of_uid[uid], uid)
            if best is None or key < best:
                best = key
        chosen[image] = best[1]
    return chosen
