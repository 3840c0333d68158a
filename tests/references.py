"""Independent references for tests, written from MISSION.md's definitions; nothing here imports pipeline/."""

from __future__ import annotations

from collections.abc import Sequence

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
