"""Concept metadata (MetaCLIP's entry list): build it from numbers, WordNet, a corpus and titles; load it."""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import re
import shutil
import string
import tempfile
import time
import unicodedata
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from pipeline.core.errors import UserError
from pipeline.kernels.matcher import WRAPPED, is_cjk_or_similar

log = logging.getLogger(__name__)

DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
WORDNET_INSTALL_HINT = "install it with `apt-get install wordnet-base` or pass --wordnet-dir"

# The WordNet 3.0 lexicographer files, in file-number order (lexnames(5WN)). nltk's reader
# needs a `lexnames` file that Debian's wordnet-base does not ship (README.Debian calls it a
# remnant the C library has compiled in), so it is written from this table.
_LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
_LEX_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_POS_FILES = ("noun", "verb", "adj", "adv")
# What nltk's reader opens to list all synsets; cntlist.rev and index.sense are read only
# for sense counts and sense keys, which this module does not use.
_WORDNET_FILES = tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in _POS_FILES) + tuple(
    f"{pos}.exc" for pos in _POS_FILES
)

# The matcher's wrapped marks split tokens, so that every n-gram built here can match a text.
_WRAPPED_SPLIT = re.compile("[" + re.escape(WRAPPED) + "]")
_PUNCTUATION = frozenset(string.punctuation)


class MetadataError(UserError):
    """Concept metadata cannot be built or read: a missing source, a bad file, an empty result."""


@dataclass(frozen=True)
class Concepts:
    """A loaded concept list. An entry's id is its index in `entries`.

    `synonyms` is set when the file was `{concept: [synonym, ...]}`: it maps each concept to
    its match strings, the concept name first, all of them present in `entries`.
    """

    entries: tuple[str, ...]
    synonyms: dict[str, tuple[str, ...]] | None = None


# --------------------------------------------------------------------------- sources


def numbers() -> list[str]:
    """The numbers 0 to 99 as strings, MetaCLIP's first block of entries."""
    return [str(i) for i in range(100)]


# build_metadata's flag `numbers` shadows the function inside the builders.
_numbers = numbers


WORDNET_SOURCES = ("lemmas", "synset-names")


def wordnet_lemmas(wordnet_dir: str | None = None, source: str = "lemmas") -> list[str]:
    """All lemma names of all WordNet 3.0 synsets, '_' turned into spaces, case kept, sorted.

    Read from a WordNet database folder (default: Debian's `wordnet-base` at
    /usr/share/wordnet); the names are nltk's reader's. Nothing is downloaded. WordNet 3.0
    gives 117,659 synsets and 148,730 strings. MetaCLIP's build_metadata.py kept only each
    synset's name, its first lemma lower-cased (86,571 strings here, "new york"); this keeps
    every lemma with WordNet's case ("New York", "Carassius auratus", "dog"). `source="synset-names"` gives
    MetaCLIP's list instead: the head word of each synset id ("new york" from new_york.n.01).
    """
    if source not in WORDNET_SOURCES:
        raise MetadataError(f"unknown WordNet source {source!r}; known: {', '.join(WORDNET_SOURCES)}")
    start = time.perf_counter()
    lemmas: set[str] = set()
    synsets = 0
    for _, _, names in wordnet_synsets(wordnet_dir):
        synsets += 1
        # Multi-word lemmas are stored with '_' ("New_York"); texts have spaces. A synset's
        # id (nltk's name(), new_york.n.01) is its first lemma, lower-cased.
        if source == "synset-names":
            lemmas.add(names[0].lower().replace("_", " "))
        else:
            lemmas.update(name.replace("_", " ") for name in names)
    log.info(
        "wordnet: %d synsets, %d distinct lemma names from %s in %.1fs",
        synsets, len(lemmas), wordnet_dir or DEFAULT_WORDNET_DIR, time.perf_counter() - start,
    )
    return sorted(lemmas)


# An adjective's syntactic marker after its word in data.adj: "galore(ip)", "elect(p)", "big(a)".
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")


def wordnet_synsets(wordnet_dir: str | None = None) -> Iterator[tuple[str, int, list[str]]]:
    """(pos file, byte offset, lemma names) of every synset, read straight from the data files.

    The data file format (wndb(5WN)): `offset lex_filenum ss_type w_cnt word lex_id ...` with
    w_cnt in hex; lines starting with spaces are the licence. The same names nltk's reader
    gives (tested against it), in a second rather than a minute.
    """
    root = _wordnet_root(wordnet_dir)
    for pos in _POS_FILES:
        with open(os.path.join(root, f"data.{pos}"), encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(" "):
                    continue
                fields = line.split(" ")
                n = int(fields[3], 16)
                yield pos, int(fields[0]), [_ADJ_MARKER.sub("", w) for w in fields[4 : 4 + 2 * n : 2]]


def _wordnet_root(wordnet_dir: str | None) -> str:
    """The WordNet database folder, checked: one actionable error when it is absent or incomplete."""
    root = os.path.abspath(wordnet_dir or DEFAULT_WORDNET_DIR)
    if not os.path.isdir(root):
        raise MetadataError(f"WordNet folder not found: {root}; {WORDNET_INSTALL_HINT}")
    missing = [f for f in _WORDNET_FILES if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise MetadataError(
            f"WordNet folder {root} lacks {', '.join(missing)}; {WORDNET_INSTALL_HINT}"
        )
    return root


@contextmanager
def open_wordnet(wordnet_dir: str | None = None) -> Iterator[Any]:
    """nltk's WordNet reader over a WordNet 3.0 database folder (default: Debian's), for one block."""
    root = _wordnet_root(wordnet_dir)

    import nltk.data  # late: only WordNet needs nltk

    # nltk's CorpusReader (3.10) refuses any file outside an authorised data root and any
    # symlink that resolves outside the reader's root, so the database is copied next to
    # the generated `lexnames` file in a private folder that is authorised only while read.
    with tempfile.TemporaryDirectory(prefix="wordnet-") as tmp:
        for name in _WORDNET_FILES:
            shutil.copyfile(os.path.join(root, name), os.path.join(tmp, name))
        with open(os.path.join(tmp, "lexnames"), "w", encoding="utf-8") as f:
            for number, lexname in enumerate(_LEXNAMES):
                f.write(f"{number:02d}\t{lexname}\t{_LEX_CATEGORY[lexname.split('.')[0]]}\n")
        nltk.data.path.append(tmp)
        try:
            yield _wordnet_reader(tmp)
        finally:
            nltk.data.path.remove(tmp)


def _wordnet_reader(root: str) -> Any:
    """nltk's WordNetCorpusReader on `root`, without the multilingual (OMW) mapping."""
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class LocalWordNet(WordNetCorpusReader):
        def map_wn(self, version: str = "wordnet") -> None:
            # nltk maps any reader onto its own downloaded "wordnet" corpus for OMW lookups,
            # which would need that download. This database is WordNet 3.0 itself and OMW
            # is not used (omw_reader is None), so there is nothing to map.
            return None

    with warnings.catch_warnings():
        # "The multilingual functions are not available": expected, OMW is not used.
        warnings.filterwarnings("ignore", message="The multilingual functions", category=UserWarning)
        return LocalWordNet(root, None)


def _open_text(path: str) -> IO[str]:
    """Open a UTF-8 text file for streaming, gzip when the name ends in .gz."""
    if os.path.isdir(path):
        raise MetadataError(f"{path}: is a folder, expected a file")
    if not os.path.isfile(path):
        raise MetadataError(f"file not found: {path}")
    # utf-8-sig: a byte-order mark would otherwise become part of the first word or entry.
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")


def _lines(path: str) -> Iterator[str]:
    """The lines of a text file, one at a time; a decoding error names the file."""
    with _open_text(path) as f:
        try:
            yield from f
        except UnicodeDecodeError as exc:
            raise MetadataError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _segments(line: str) -> Iterator[list[str]]:
    """The runs of tokens of a line between which a bigram may form.

    Tokenisation mirrors MetaCLIP's matcher so every n-gram produced can match a text:
    the matcher pads , . ; : ? ! and backtick with spaces, so these split tokens ("3.5" is
    "3" and "5") and end a run (in "dog, cat" the matcher never sees " dog cat "); then
    whitespace splits tokens. A token made only of punctuation ("-", "&") is dropped and
    also ends a run, as MetaCLIP's build_ngram.py does. Case is kept (matching is
    case-sensitive).
    """
    for chunk in _WRAPPED_SPLIT.split(line):
        run: list[str] = []
        for token in chunk.split():
            if all(c in _PUNCTUATION for c in token):
                if run:
                    yield run
                run = []
            else:
                run.append(token)
        if run:
            yield run


def corpus_ngrams(
    paths: Sequence[str],
    min_unigram_count: int,
    min_bigram_pmi: float,
    min_bigram_count: int = 5,
    *,
    nfc: bool = False,
) -> tuple[list[str], list[str]]:
    """Frequent unigrams and high-PMI bigrams of a plain-text corpus, each list sorted.

    MetaCLIP built its entries from English Wikipedia with unigram count >= 100 and bigram
    PMI >= 30. Files are UTF-8 (gzip when named *.gz), read line by line; memory grows
    with the number of distinct unigrams and bigrams, not with the corpus size. Bigrams do
    not cross lines. See `_segments` for the tokenisation.

    Estimator (nltk's BigramAssocMeasures.pmi, which MetaCLIP's build_metadata.py used):
    with N the number of tokens in the corpus, c(w) a token's count and c(a b) the count
    of token a directly followed by token b,
        PMI(a, b) = log2( p(a,b) / (p(a) p(b)) ),  p(a,b) = c(a b) / N,  p(w) = c(w) / N,
    that is log2( c(a b) * N / (c(a) * c(b)) ). Bigrams with c(a b) < min_bigram_count are
    skipped: with few observations PMI rewards chance pairs of rare words. With `nfc` each
    line is NFC-normalised first, so a composed and a decomposed "é" count as one word.
    """
    if min_unigram_count < 1:
        raise MetadataError(f"min_unigram_count must be >= 1, got {min_unigram_count}")
    if min_bigram_count < 1:
        raise MetadataError(f"min_bigram_count must be >= 1, got {min_bigram_count}")
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise MetadataError("no corpus files given")
    start = time.perf_counter()
    unigrams: Counter[str] = Counter()
    bigrams: Counter[tuple[str, str]] = Counter()
    for path in paths:
        for line in _lines(path):
            for run in _segments(unicodedata.normalize("NFC", line) if nfc else line):
                unigrams.update(run)
                bigrams.update(zip(run, run[1:], strict=False))  # adjacent pairs
    total = sum(unigrams.values())
    if total == 0:
        raise MetadataError(f"corpus has no tokens: {', '.join(paths)}")

    kept_unigrams = sorted(w for w, c in unigrams.items() if c >= min_unigram_count)
    kept_bigrams = []
    for (a, b), c in bigrams.items():
        if c < min_bigram_count:
            continue
        pmi = math.log2(c * total / (unigrams[a] * unigrams[b]))
        if pmi >= min_bigram_pmi:
            kept_bigrams.append(f"{a} {b}")
    kept_bigrams.sort()
    log.info(
        "corpus: %d tokens, %d distinct unigrams (%d with count >= %d), %d distinct bigrams "
        "(%d with count >= %d and PMI >= %g) in %.1fs",
        total, len(unigrams), len(kept_unigrams), min_unigram_count, len(bigrams),
        len(kept_bigrams), min_bigram_count, min_bigram_pmi, time.perf_counter() - start,
    )
    return kept_unigrams, kept_bigrams


def read_titles(path: str) -> list[str]:
    """Titles (e.g. Wikipedia article titles), one per line, stripped, blank lines skipped."""
    return [t for t in (line.strip() for line in _lines(path)) if t]


# --------------------------------------------------------------------------- languages

# MetaCLIP 2's languages written without spaces (its metadata/build_ngram.py set, in Wikipedia's
# codes). Whitespace splits their text into clauses or whole lines, not words, so unigram counts
# and bigram PMI over such tokens are meaningless. MetaCLIP 2 ran a word segmenter per language
# (jieba, MeCab, PyThaiNLP, botok, ...); this builder ships none and does not pretend to segment.
NO_SPACE_LANGUAGES = frozenset({"bo", "dz", "ja", "km", "lo", "my", "ryu", "th", "zh", "zh_classical", "zh_yue"})
# A code becomes a file name (<code>.json) that the match stage reads back as the language: letters
# and digits in parts joined by "-" or "_" ("en", "zh-Hans", "zh_yue", "be-tarask", "other").
_LANGUAGE_CODE = re.compile(r"[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*")
# The corpus of a language outside that set is still refused when most of its letters belong to
# scripts written without spaces (a "yue" or "wuu" corpus, a mislabelled file). Judged on its
# first letters only, so that a wrong corpus is refused before a full pass over it.
_SCRIPT_SAMPLE_LETTERS = 1_000_000
_MAX_NO_SPACE_SHARE = 0.5
# Kana is written without spaces too, though MetaCLIP 2's padding rule leaves it out.
_KANA = ((0x3040, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F))
_NO_SEGMENTATION = (
    "give its words or titles with --from-titles FILE (one entry per line); "
    "word segmentation is not done here"
)


def check_language_code(code: str) -> str:
    """`code` if it can name a per-language metadata list (<code>.json), else a MetadataError."""
    if len(code) > 32 or not _LANGUAGE_CODE.fullmatch(code):
        raise MetadataError(
            f"{code!r} is not a language code: use letters and digits, parts joined by '-' or '_' "
            "(en, de, zh-Hans, zh_yue, other)"
        )
    return code


def is_no_space_language(code: str) -> bool:
    """True for MetaCLIP 2's languages written without spaces, by code or by its base ("zh-Hans")."""
    norm = code.lower().replace("-", "_")
    return norm in NO_SPACE_LANGUAGES or norm.split("_")[0] in NO_SPACE_LANGUAGES


def _no_space_script(char: str) -> bool:
    code = ord(char)
    return is_cjk_or_similar(char) or any(lo <= code <= hi for lo, hi in _KANA)


def no_space_script_share(paths: Sequence[str], letters: int = _SCRIPT_SAMPLE_LETTERS) -> float:
    """Share of the corpus's first `letters` letters (and combining marks) in scripts written without spaces."""
    seen = no_space = 0
    for path in paths:
        for line in _lines(path):
            for char in line:
                if unicodedata.category(char)[0] in "LM":
                    seen += 1
                    no_space += _no_space_script(char)
            if seen >= letters:
                return no_space / seen
    return no_space / seen if seen else 0.0


def _check_language_sources(language: str, wordnet: bool, corpus: Sequence[str] | None) -> None:
    """Refuse what a per-language build cannot do honestly, before any source is read in full."""
    if wordnet and language.lower().replace("_", "-").split("-")[0] != "en":
        raise MetadataError(
            f"--wordnet gives English WordNet 3.0 lemmas; they are not a {language} list "
            "(give that language's WordNet lemmas with --from-titles FILE)"
        )
    if not corpus:
        return
    if is_no_space_language(language):
        raise MetadataError(
            f"{language} is written without spaces, so whitespace tokens are not words and unigram/bigram/PMI "
            f"mining (--corpus) cannot run; {_NO_SEGMENTATION}"
        )
    share = no_space_script_share(corpus)
    if share > _MAX_NO_SPACE_SHARE:
        raise MetadataError(
            f"the --corpus given for {language} is {share:.0%} letters of scripts written without spaces "
            f"(CJK, kana, Thai, Lao, Burmese, Khmer, Tibetan), so unigram/bigram/PMI mining cannot run; "
            f"{_NO_SEGMENTATION}"
        )


# --------------------------------------------------------------------------- build and write


def _collect_sources(
    *,
    numbers: bool,
    wordnet: bool,
    wordnet_dir: str | None,
    wordnet_source: str = "lemmas",
    corpus: Sequence[str] | None = None,
    min_unigram_count: int = 100,
    min_bigram_pmi: float = 30.0,
    min_bigram_count: int = 5,
    titles: str | None = None,
    language: str | None = None,
) -> dict[str, list[str]]:
    """Each selected source's entries, in MetaCLIP's order (which fixes the ids).

    With `language` the sources make that language's list: checked first (see
    `_check_language_sources`), then every entry NFC-normalised, as Wikipedia stores its text,
    so that "é" composed and decomposed give one entry.
    """
    if not (numbers or wordnet or corpus or titles):
        raise MetadataError("no source selected: choose numbers, wordnet, a corpus or titles")
    if language is not None:
        check_language_code(language)
        _check_language_sources(language, wordnet, corpus)
    sources: dict[str, list[str]] = {}
    if numbers:
        sources["numbers"] = _numbers()
    if wordnet:
        sources["wordnet"] = wordnet_lemmas(wordnet_dir, wordnet_source)
    if corpus:
        sources["unigrams"], sources["bigrams"] = corpus_ngrams(
            corpus, min_unigram_count, min_bigram_pmi, min_bigram_count, nfc=language is not None
        )
    if titles:
        sources["titles"] = read_titles(titles)
    if language is not None:
        sources = {name: [unicodedata.normalize("NFC", e) for e in items] for name, items in sources.items()}
    return sources


def _union(sources: dict[str, list[str]]) -> list[str]:
    """The sources' entries in order, each once (first occurrence wins)."""
    seen: set[str] = set()
    entries: list[str] = []
    for name, items in sources.items():
        before = len(entries)
        for item in items:
            if item not in seen:
                seen.add(item)
                entries.append(item)
        log.info("metadata: %s gives %d entries, %d new", name, len(items), len(entries) - before)
    if not entries:
        raise MetadataError(f"metadata is empty: the selected sources ({', '.join(sources)}) gave no entries")
    return entries


def build_metadata(
    *,
    numbers: bool,
    wordnet: bool,
    wordnet_dir: str | None = None,
    wordnet_source: str = "lemmas",
    corpus: Sequence[str] | None = None,
    min_unigram_count: int = 100,
    min_bigram_pmi: float = 30.0,
    min_bigram_count: int = 5,
    titles: str | None = None,
    language: str | None = None,
) -> list[str]:
    """The concept list: numbers, WordNet lemmas, corpus unigrams, corpus bigrams, titles.

    Each entry appears once, at its first occurrence in that order, so an entry's id (its
    index) depends only on the sources and thresholds. With `language`, one language's list
    for a per-language metadata folder (see `_collect_sources`).
    """
    return _union(
        _collect_sources(
            numbers=numbers, wordnet=wordnet, wordnet_dir=wordnet_dir, wordnet_source=wordnet_source, corpus=corpus,
            min_unigram_count=min_unigram_count, min_bigram_pmi=min_bigram_pmi,
            min_bigram_count=min_bigram_count, titles=titles, language=language,
        )
    )


def language_list_path(folder: str, language: str) -> str:
    """Where one language's list goes in a per-language metadata folder: <folder>/<language>.json."""
    check_language_code(language)
    if folder.lower().endswith((".json", ".txt")) and not os.path.isdir(folder):
        raise MetadataError(
            f"with a language, the output is the metadata folder (the list goes to FOLDER/{language}.json), "
            f"not a file: {folder}"
        )
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise MetadataError(f"{folder}: is a file; with a language, the output is the metadata folder")
    # The match stage reads <lang>.json and <lang>.txt and refuses a folder that holds both.
    other = os.path.join(folder, f"{language}.txt")
    if os.path.exists(other):
        raise MetadataError(f"{other} exists: the match stage would find two {language} lists; remove it first")
    return os.path.join(folder, f"{language}.json")


def write_language_metadata(entries: Sequence[str], folder: str, language: str) -> str:
    """Write one language's list into a per-language metadata folder; return the file's path."""
    path = language_list_path(folder, language)
    write_metadata(entries, path)
    return path


def write_metadata(entries: Sequence[str], path: str) -> None:
    """Write `entries` as a JSON list of strings (MetaCLIP's metadata.json), atomically."""
    entries = list(entries)
    # Checked with the loader's rules so that whatever is written can be loaded back.
    _check_entries(entries, path)
    write_json_atomic(entries, path)
    log.info("metadata: wrote %d entries to %s", len(entries), os.path.abspath(path))


def write_json_atomic(obj: Any, path: str) -> None:
    """Write `obj` as UTF-8 JSON; a reader sees the old file or the whole new one."""
    target = os.path.abspath(path)
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    # Temporary file in the target's folder: os.replace is atomic only within a filesystem.
    # A unique name opened with "x" rather than mkstemp: mkstemp makes the file 0600, which
    # would hide the metadata from executors running as another user; "x" honours the umask.
    tmp = os.path.join(folder, f".{os.path.basename(target)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- load


def _check_entry(entry: object, path: str, where: str) -> str:
    if not isinstance(entry, str):
        raise MetadataError(f"{path}: {where} is {type(entry).__name__} {entry!r:.60}, expected a string")
    if not entry.strip():
        # An empty entry would match every text ("  " is in every padded text).
        raise MetadataError(f"{path}: {where} is an empty or blank string")
    return entry


def _check_entries(entries: list[Any], path: str, where: str = "entry") -> tuple[str, ...]:
    """Validate a plain entry list: strings, non-blank, unique (an id must name one string)."""
    if not entries:
        raise MetadataError(f"{path}: the concept list is empty")
    first: dict[str, int] = {}
    for i, entry in enumerate(entries):
        _check_entry(entry, path, f"{where} {i}")
        if entry in first:
            raise MetadataError(f"{path}: {entry!r} appears twice ({where} {first[entry]} and {i})")
        first[entry] = i
    return tuple(entries)


def _concepts_from_synonyms(data: dict[str, Any], path: str) -> Concepts:
    if not data:
        raise MetadataError(f"{path}: the concept object is empty")
    entries: dict[str, None] = {}  # insertion-ordered set: file order fixes the ids
    synonyms: dict[str, tuple[str, ...]] = {}
    for concept, syns in data.items():
        _check_entry(concept, path, "a concept name")
        if not isinstance(syns, list):
            raise MetadataError(
                f"{path}: concept {concept!r} maps to {type(syns).__name__}, expected a list of synonyms"
            )
        names = [concept]
        for j, syn in enumerate(syns):
            _check_entry(syn, path, f"synonym {j} of {concept!r}")
            if syn not in names:
                names.append(syn)
        synonyms[concept] = tuple(names)
        entries.update(dict.fromkeys(names))
    return Concepts(entries=tuple(entries), synonyms=synonyms)


def load_concepts(path: str) -> Concepts:
    """Load a concept list: a JSON list of strings (MetaCLIP's metadata.json), a JSON object
    {concept: [synonym, ...]}, or a text file with one entry per line (blank lines skipped).

    A file is read as JSON when its name ends in .json or its text starts with '[' or '{'.
    """
    text = "".join(_lines(path))
    if path.lower().endswith(".json") or text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataError(
                f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            ) from None
        if isinstance(data, list):
            concepts = Concepts(entries=_check_entries(data, path))
        elif isinstance(data, dict):
            concepts = _concepts_from_synonyms(data, path)
        else:
            raise MetadataError(
                f"{path}: JSON {type(data).__name__}, expected a list of strings or an object "
                "{concept: [synonym, ...]}"
            )
    else:
        lines = [line.strip() for line in text.splitlines()]
        concepts = Concepts(entries=_check_entries([s for s in lines if s], path, "non-blank line"))
    log.info(
        "concepts: %d entries%s from %s",
        len(concepts.entries),
        f" for {len(concepts.synonyms)} concepts" if concepts.synonyms is not None else "",
        path,
    )
    return concepts
