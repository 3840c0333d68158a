"""Downstream concept lists with synonyms, `{concept: [synonym, ...]}`: ImageNet's 1,000 classes.

The count stage counts a text for a concept when it contains any of the concept's
synonyms ("The Neglected Tails of Vision-Language Models"); the report follows those
counts through curation. This module builds such a list for ImageNet-1k from two public
facts: open_clip's class names (OpenAI's cleaned-up names, in class-index order) and
each class's WordNet 3.0 synset (its lemma names are the synonyms). The synset comes
from the class's WordNet id when a list of ids is given (ImageNet's own
`LOC_synset_mapping.txt`, or any JSON list of ids or of objects with a `wnid`), and
otherwise from the class name: the most frequent noun sense under `physical_entity`
that has the name as a lemma.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.concepts.metadata import MetadataError, open_wordnet

log = logging.getLogger(__name__)
WNID = re.compile(r"^n\d{8}$")


@dataclass
class SynonymList:
    """The `{concept: [synonyms]}` mapping and how each concept's synset was found."""

    synonyms: dict[str, list[str]]
    by_wnid: int = 0
    by_name: int = 0
    unresolved: list[str] = field(default_factory=list)
    wnids: list[str | None] = field(default_factory=list)


def imagenet_classnames() -> list[str]:
    """open_clip's 1,000 ImageNet class names, in class-index order."""
    try:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    except ImportError:
        raise MetadataError(
            "ImageNet class names come from open_clip: pip install open_clip_torch (the project's [embed] extra)"
        ) from None
    return list(IMAGENET_CLASSNAMES)


def read_wnids(path: str) -> list[str]:
    """WordNet ids from `LOC_synset_mapping.txt` ("n01440764 tench, Tinca tinca" per line),
    a file of one id per line, or JSON (a list of ids, or of objects with `wnid`, ordered by `cid` if present)."""
    if not os.path.isfile(path):
        raise MetadataError(f"WordNet id file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, list):
            raise MetadataError(f"{path}: expected a JSON list of WordNet ids or of objects with 'wnid'")
        if data and isinstance(data[0], dict):
            if any("wnid" not in d for d in data):
                raise MetadataError(f"{path}: an object in the list has no 'wnid'")
            data = [d["wnid"] for d in sorted(data, key=lambda d: d.get("cid", 0))]
        wnids = [str(x) for x in data]
    else:
        wnids = [line.split()[0] for line in text.splitlines() if line.strip()]
    bad = [w for w in wnids if not WNID.match(w)]
    if bad:
        raise MetadataError(f"{path}: {bad[0]!r} is not a WordNet noun id like n01440764 ({len(bad)} such)")
    return wnids


def _lemmas(synset: Any) -> list[str]:
    return [name.replace("_", " ") for name in synset.lemma_names()]


def _by_name(wn: Any, name: str, physical: Any) -> Any | None:
    """The most frequent noun sense with `name` as a lemma that is a physical thing, else None."""
    hypernyms = lambda s: s.hypernyms() + s.instance_hypernyms()  # noqa: E731
    for candidate in dict.fromkeys([name, name.lower()]):
        for synset in wn.synsets(candidate.replace(" ", "_"), "n"):
            lowered = {lemma.lower() for lemma in _lemmas(synset)}
            if candidate.lower() in lowered and physical in synset.closure(hypernyms):
                return synset
    return None


def concept_synonyms(
    classnames: Sequence[str], wnids: Sequence[str] | None = None, wordnet_dir: str | None = None
) -> SynonymList:
    """`{class name: [class name, WordNet lemma names...]}` in class order, duplicates removed."""
    if wnids is not None and len(wnids) != len(classnames):
        raise MetadataError(f"{len(wnids)} WordNet ids for {len(classnames)} class names; they must pair up in order")
    # Two classes can share a name (OpenAI's list has "missile" for 657 and 744, and
    # "sunglasses" for 836 and 837): such concepts are keyed "<name> (<class index>)",
    # and the name stays their first synonym.
    repeated = {c for c in classnames if classnames.count(c) > 1}
    out = SynonymList(synonyms={})
    with open_wordnet(wordnet_dir) as wn:
        physical = wn.synset("physical_entity.n.01")
        for i, name in enumerate(classnames):
            if wnids is not None:
                offset = int(wnids[i][1:])
                try:
                    synset = wn.synset_from_pos_and_offset("n", offset)
                except Exception:  # nltk raises a bare WordNetError for unknown offsets
                    synset = None
                # nltk seeks to the offset and parses what is there: check it landed on a record.
                if synset is None or synset.offset() != offset:
                    raise MetadataError(f"WordNet id {wnids[i]} (class {i}, {name!r}) is not in WordNet 3.0")
                out.by_wnid += 1
            else:
                synset = _by_name(wn, name, physical)
                if synset is None:
                    out.unresolved.append(name)
                else:
                    out.by_name += 1
            out.wnids.append(f"n{synset.offset():08d}" if synset is not None else None)
            names = [name, *(_lemmas(synset) if synset is not None else [])]
            key = f"{name} ({i})" if name in repeated else name
            out.synonyms[key] = list(dict.fromkeys(n for n in names if n.strip()))
    return out
