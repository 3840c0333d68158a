"""`curate metadata build` and `curate metadata imagenet`: the concept-list commands."""

from __future__ import annotations

import argparse
import os
from typing import Any

from pipeline.concepts.imagenet import concept_synonyms, imagenet_classnames, read_wnids
from pipeline.concepts.metadata import (
    DEFAULT_WORDNET_DIR,
    WORDNET_SOURCES,
    MetadataError,
    _collect_sources,
    _union,
    is_no_space_language,
    language_list_path,
    write_json_atomic,
    write_metadata,
)


def add_cli(subparsers: Any) -> None:
    """Register `metadata build` on the `curate` command's subparsers."""
    p = subparsers.add_parser("metadata", help="build the concept list (MetaCLIP's metadata.json)")
    actions = p.add_subparsers(dest="metadata_command", metavar="ACTION", required=True)
    b = actions.add_parser(
        "build",
        help="build a concept list from numbers, WordNet, a text corpus and titles",
        description="Entries come in the order numbers, WordNet, unigrams, bigrams, titles; each "
        "appears once (first occurrence) and its id is its index in the output JSON list. With --language "
        "CODE the list is that language's, written as FOLDER/CODE.json into a per-language metadata folder "
        "(match.metadata), every entry NFC-normalised. Languages written without spaces (zh, ja, th, lo, km, "
        "my, bo, dz, ryu and their variants, or a corpus mostly in those scripts) have no whitespace words: "
        "--corpus is refused for them and their list comes from --from-titles (one entry per line, e.g. "
        "Wikipedia titles or the output of a word segmenter you run); no segmentation is done here.",
    )
    b.add_argument(
        "--output", required=True, metavar="PATH",
        help="the JSON list to write; with --language, the metadata folder (the list goes to PATH/CODE.json)",
    )
    b.add_argument(
        "--language", metavar="CODE",
        help="build one language's list for a per-language metadata folder (en, de, zh, pt-BR, other, ...)",
    )
    b.add_argument("--numbers", action="store_true", help="add the numbers 0-99")
    b.add_argument("--wordnet", action="store_true", help="add all WordNet 3.0 lemma names")
    b.add_argument(
        "--wordnet-source", choices=WORDNET_SOURCES, default="lemmas",
        help="lemmas: every lemma name, case kept (default); synset-names: one lowercase head word per "
        "synset, as MetaCLIP's build_metadata.py",
    )
    b.add_argument(
        "--wordnet-dir", metavar="DIR", help=f"WordNet database folder (default {DEFAULT_WORDNET_DIR})"
    )
    b.add_argument(
        "--corpus", nargs="+", action="extend", metavar="PATH",
        help="UTF-8 text file(s), .gz allowed, for unigrams and bigrams",
    )
    b.add_argument("--min-unigram-count", type=int, default=100, metavar="N", help="default 100 (MetaCLIP)")
    b.add_argument("--min-bigram-pmi", type=float, default=30.0, metavar="X", help="log2 PMI, default 30 (MetaCLIP)")
    b.add_argument("--min-bigram-count", type=int, default=5, metavar="N", help="skip rarer bigrams (default 5)")
    b.add_argument(
        "--titles", "--from-titles", dest="titles", metavar="PATH",
        help="text file with one title or word per line (any language), .gz allowed; blank lines skipped",
    )
    b.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    b.set_defaults(func=cmd_metadata_build)

    add_imagenet(actions)


def cmd_metadata_build(args: argparse.Namespace) -> int:
    """`curate metadata build`: build, write, print one summary line."""
    if args.wordnet_dir and not args.wordnet:
        raise MetadataError("--wordnet-dir needs --wordnet")
    language = args.language
    # The target is checked before the sources are read: a wrong folder fails in a second.
    output = language_list_path(args.output, language) if language is not None else args.output
    sources = _collect_sources(
        numbers=args.numbers, wordnet=args.wordnet, wordnet_dir=args.wordnet_dir,
        wordnet_source=args.wordnet_source, corpus=args.corpus,
        min_unigram_count=args.min_unigram_count, min_bigram_pmi=args.min_bigram_pmi,
        min_bigram_count=args.min_bigram_count, titles=args.titles, language=language,
    )
    entries = _union(sources)
    write_metadata(entries, output)
    per_source = ", ".join(f"{name} {len(items)}" for name, items in sources.items())
    what = "metadata" if language is None else f"metadata {language}"
    note = " (written without spaces: entries match inside runs of text)" if language and is_no_space_language(language) else ""
    print(f"{what}: {per_source}; {len(entries)} distinct entries{note} -> {os.path.abspath(output)}")
    return 0




def add_imagenet(actions: Any) -> None:
    """Register `metadata imagenet` on the `metadata` command's actions."""
    p = actions.add_parser(
        "imagenet",
        help="ImageNet-1k classes with WordNet synonyms, as a {concept: [synonyms]} JSON",
        description="Class names from open_clip (OpenAI's names, class-index order); synonyms are the "
        "lemma names of each class's WordNet 3.0 synset, found from --wnids when given, else by name.",
    )
    p.add_argument("--output", required=True, metavar="FILE", help="the JSON object to write")
    p.add_argument(
        "--wnids", metavar="FILE",
        help="ImageNet's LOC_synset_mapping.txt, one id per line, or a JSON list (of ids or objects with 'wnid')",
    )
    p.add_argument("--wordnet-dir", metavar="DIR", help="WordNet database folder (default Debian's)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_imagenet)


def cmd_imagenet(args: argparse.Namespace) -> int:
    names = imagenet_classnames()
    wnids = read_wnids(args.wnids) if args.wnids else None
    result = concept_synonyms(names, wnids, args.wordnet_dir)
    write_json_atomic(result.synonyms, args.output)
    total = sum(len(s) for s in result.synonyms.values())
    how = f"{result.by_wnid} by WordNet id" if wnids else f"{result.by_name} found by name, {len(result.unresolved)} by name only"
    print(f"imagenet: {len(names)} classes, {total} synonyms ({how}) -> {os.path.abspath(args.output)}")
    if result.unresolved:
        print(f"  no WordNet sense found for: {', '.join(result.unresolved[:20])}{' ...' if len(result.unresolved) > 20 else ''}")
    return 0
