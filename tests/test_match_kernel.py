"""The matcher kernel (no Spark): MetaCLIP's semantics, CSR output, random and real-data agreement
with tests/references.py on both Aho-Corasick backends, and the per-process matcher cache."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from pipeline.kernels import matcher as match_module
from pipeline.kernels.matcher import BACKENDS, Matcher, get_matcher, reference_match, spaced
from tests.conftest import anchor
from tests.references import MARK_NAMES, METACLIP_WRAPPED_MARKS, metaclip_match, metaclip_spaced

MODES = ("metaclip", "case_insensitive")

# MISSION.md's wrapped marks, written out in tests/references.py rather than taken from
# pipeline.stages.match, so that a change there is a failure here.
WRAPPED_MARKS = [pytest.param(m, id=n) for m, n in zip(METACLIP_WRAPPED_MARKS, MARK_NAMES, strict=True)]
# Characters that are neither wrapped nor turned into spaces: they stay glued to their words.
UNWRAPPED_MARKS = [
    pytest.param("-", id="hyphen"),
    pytest.param("(", id="paren"),
    pytest.param("'", id="apostrophe"),
    pytest.param('"', id="quote"),
    pytest.param("/", id="slash"),
    pytest.param("&", id="ampersand"),
    pytest.param("\u2026", id="ellipsis"),
    pytest.param("\uff0c", id="fullwidth-comma"),
    pytest.param("\u3002", id="ideographic-period"),
    pytest.param("\u037e", id="greek-question"),  # looks like ";" but is U+037E
    pytest.param("\xa0", id="nbsp"),
    pytest.param("\x0b", id="vertical-tab"),
    pytest.param("\x0c", id="form-feed"),
    pytest.param("\u2028", id="line-separator"),
    pytest.param("\x85", id="next-line"),
]
# The characters MISSION.md turns into a space.
SPACED_CHARS = [pytest.param("\t", id="tab"), pytest.param("\n", id="newline"), pytest.param("\r", id="cr")]


def rows(offsets: np.ndarray, values: np.ndarray) -> list[list[int]]:
    """CSR arrays as one list of ids per text."""
    return [values[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]


def check_csr(offsets: np.ndarray, values: np.ndarray, n: int, n_entries: int) -> None:
    """The CSR contract of Matcher.match_batch."""
    assert offsets.dtype == np.int32 and values.dtype == np.int32
    assert offsets.shape == (n + 1,) and values.ndim == 1
    assert offsets[0] == 0 and offsets[-1] == len(values)
    assert (np.diff(offsets) >= 0).all()
    for row in rows(offsets, values):
        assert all(a < b for a, b in zip(row, row[1:], strict=False)), row  # sorted and unique
        assert all(0 <= v < n_entries for v in row)


def reference(text: str | None, entries: Sequence[str], mode: str = "metaclip") -> list[int]:
    """tests/references.py's MetaCLIP match in the given mode."""
    return metaclip_match(text, entries, case_insensitive=mode == "case_insensitive")


def matches(texts: Sequence[str | None], entries: Sequence[str], mode: str = "metaclip") -> dict[str, list[list[int]]]:
    """Ids per text from the independent reference, pipeline's reference loop and match_batch on
    each backend, CSR checked."""
    out = {
        "tests.references": [reference(t, entries, mode) for t in texts],
        "pipeline.kernels.matcher.reference_match": [reference_match(t, entries, mode) for t in texts],
    }
    for backend in BACKENDS:
        offsets, values = Matcher(entries, mode, backend).match_batch(texts)
        check_csr(offsets, values, len(texts), len(entries))
        out[backend] = rows(offsets, values)
    return out


def assert_all(texts: Sequence[str | None], entries: Sequence[str], expected: list[list[int]], mode: str = "metaclip") -> None:
    """Both references, both backends' match_batch and both backends' match give `expected`."""
    got = matches(texts, entries, mode)
    for name, result in got.items():
        assert result == expected, f"{name} ({mode}): {result} != {expected}"
    for backend in BACKENDS:
        matcher = Matcher(entries, mode, backend)
        assert [matcher.match(t) for t in texts] == expected, backend


# --------------------------------------------------------------------------- MISSION.md's list


@pytest.mark.parametrize(
    ("text", "entries", "expected"),
    [
        ("Adult T-shirt", ["T-shirt", "shirt", "Adult"], [0, 2]),
        ("(dog)", ["dog", "(dog", "dog)"], []),
        ("dog,cat", ["dog", "cat", "dog,cat", "dog cat"], [0, 1]),
        ("DOG", ["dog", "Dog"], []),
        ("price 3.5", ["3", "5", "3.5", "price", "price 3"], [0, 1, 3, 4]),
        ("new york york", ["new york", "new", "york", "york york", "new york york", "york new"], [0, 1, 2, 3, 4]),
        ("dog dog dog", ["dog", "dog dog"], [0, 1]),
        ("dog\tcat\nbird\rfish", ["dog cat", "cat bird", "bird fish", "dog", "fish", "dog\tcat"], [0, 1, 2, 3, 4]),
        ("\n\r\tdog\r\n", ["dog"], [0]),
        ("dog", ["dog", "cat", "dog"], [0, 2]),  # same string under two ids: both ids
        ("", ["dog", "a"], []),
        ("a dog", [], []),
    ],
)
def test_metaclip_semantics(text: str, entries: list[str], expected: list[int]) -> None:
    assert_all([text], entries, [expected])


@pytest.mark.parametrize(
    ("text", "entries", "expected"),
    [
        pytest.param("red,green,blue", ["red", "green", "blue", "red,green", "green blue"], [0, 1, 2], id="comma"),
        pytest.param("www.example.com", ["www", "example", "com", "example.com", ".com"], [0, 1, 2], id="period"),
        pytest.param("dog;cat", ["dog", "cat", "dog;cat", "dog cat"], [0, 1], id="semicolon"),
        pytest.param("Time:12:30", ["Time", "12", "30", "12:30", "Time:"], [0, 1, 2], id="colon"),
        pytest.param("why?because", ["why", "because", "why?", "why?because"], [0, 1], id="question"),
        pytest.param("wow!great!!", ["wow", "great", "wow!", "great!!", "!"], [0, 1, 4], id="exclamation"),
        pytest.param("`code`block", ["code", "block", "`code`", "code block", "`"], [0, 1, 4], id="backtick"),
    ],
)
def test_each_wrapped_mark_by_example(text: str, entries: list[str], expected: list[int]) -> None:
    """One written-out caption per wrapped mark: the words on each side match, the glued form never."""
    assert_all([text], entries, [expected])


@pytest.mark.parametrize("mark", WRAPPED_MARKS)
def test_wrapped_mark_separates_words(mark: str) -> None:
    # Spaced, "dog;cat" is " dog ; cat ": both words match, and so do the mark alone and the
    # entry "dog ; cat" written with its spaces; "dog cat" does not (the mark is in between).
    entries = ["dog", "cat", f"dog{mark}cat", "dog cat", mark, f"dog {mark} cat"]
    texts = [f"dog{mark}cat", f"dog{mark}", f"{mark}cat", f"dog{mark}{mark}cat", f"hotdog{mark}cats", f"dog {mark} cat"]
    expected = [[0, 1, 4, 5], [0, 4], [1, 4], [0, 1, 4], [4], [0, 1, 4]]
    for mode in MODES:
        assert_all(texts, entries, expected, mode)
    # Case-insensitive mode spaces the same marks.
    assert_all([f"DOG{mark}CAT"], ["dog", "cat", f"dog{mark}cat"], [[]])
    assert_all([f"DOG{mark}CAT"], ["dog", "cat", f"dog{mark}cat"], [[0, 1]], "case_insensitive")


@pytest.mark.parametrize("mark", UNWRAPPED_MARKS)
def test_other_marks_are_not_spaced(mark: str) -> None:
    """Only the seven marks are wrapped: any other character, in either mode, stays part of its word."""
    entries = ["dog", "cat", f"dog{mark}cat", f"dog{mark}", f"{mark}cat"]
    texts = [f"dog{mark}cat", f"a dog{mark} b", f"{mark}cat"]
    for mode in MODES:
        assert_all(texts, entries, [[2], [3], [4]], mode)
    assert_all([f"DOG{mark}CAT"], entries, [[]])
    assert_all([f"DOG{mark}CAT"], entries, [[2]], "case_insensitive")


@pytest.mark.parametrize("char", SPACED_CHARS)
def test_tab_newline_cr_become_spaces(char: str) -> None:
    entries = ["dog", "cat", "dog cat", f"dog{char}cat", "big dog", "cat  bird"]
    texts = [f"dog{char}cat", f"big{char}dog", f"{char}dog{char}", f"cat{char}{char}bird", f"DOG{char}CAT"]
    assert_all(texts, entries, [[0, 1, 2], [0, 4], [0], [1, 5], []])
    assert_all(texts, entries, [[0, 1, 2], [0, 4], [0], [1, 5], [0, 1, 2]], "case_insensitive")


@pytest.mark.parametrize(
    ("text", "entries", "metaclip", "case_insensitive"),
    [
        ("A DOG", ["dog", "Dog", "DOG", "a dog", "A DOG", "cat"], [2, 4], [0, 1, 2, 3, 4]),
        ("DOG", ["dog", "Dog"], [], [0, 1]),
        ("dOg on a Mat", ["dog", "Dog", "mat", "on a MAT", "cat"], [], [0, 1, 2, 3]),
        # A lowercase text and capitalised entries: the entries must be lowercased too.
        ("new york", ["New York", "NEW YORK", "new york", "York"], [2], [0, 1, 2, 3]),
        ("DOG;CAT", ["dog", "cat", "DOG", "dog;cat", "dog cat"], [2], [0, 1, 2]),
        ("THE DOG-CAT", ["dog", "cat", "dog-cat", "DOG-CAT", "the"], [3], [2, 3, 4]),
        ("(DOG)", ["dog", "(dog)", "DOG"], [], [1]),
        # CR + LF is two spaces.
        ("BIG\tDOG\r\nCAT", ["big dog", "dog cat", "BIG DOG", "Dog  Cat"], [2], [0, 2, 3]),
        ("ÉCOLE Straße ΣΟΦΙΑ", ["école", "straße", "σοφια", "ECOLE", "École"], [], [0, 1, 2, 4]),
    ],
    ids=["a-dog", "dog", "mixed", "capitalised-entries", "semicolon", "hyphen", "paren", "crlf", "non-ascii"],
)
def test_case_insensitive_mode(text: str, entries: list[str], metaclip: list[int], case_insensitive: list[int]) -> None:
    assert_all([text], entries, [metaclip])
    assert_all([text], entries, [case_insensitive], "case_insensitive")


@pytest.mark.parametrize("mark", WRAPPED_MARKS)
def test_entry_with_wrapped_punctuation_never_matches(mark: str) -> None:
    # In the spaced text every wrapped mark has a space on both sides, so an entry in which
    # the mark touches another character can never match.
    entries = [f"a{mark}b", f"U{mark}S{mark}", f"dog{mark}", f"{mark}dog", f"a {mark}b", f"{mark}{mark}"]
    texts = [
        f"a{mark}b",
        f"the U{mark}S{mark} army",
        f"dog{mark}",
        f"{mark}dog",
        f"a {mark}b",
        f"{mark}{mark}",
        f" a{mark}b U{mark}S{mark} dog{mark} {mark}dog {mark} ",
    ]
    for mode in MODES:
        assert_all(texts, entries, [[] for _ in texts], mode)
    # ... while the words around the mark still match.
    assert_all([f"a{mark}b"], ["a", "b"], [[0, 1]])


@pytest.mark.parametrize("mark", WRAPPED_MARKS)
def test_entry_with_space_flanked_mark_matches(mark: str) -> None:
    """MetaCLIP pads entries with one space each side and does not space them further, so
    an entry whose mark already has spaces around it (or is the mark alone) does match.
    MISSION.md's "contains a wrapped mark can never match" holds only for touching marks."""
    entries = [mark, f"a {mark} b", f"dog {mark}", f"{mark} dog"]
    assert_all([f"a{mark}b", f"dog{mark}", f"{mark}dog", "a b"], entries, [[0, 1], [0, 2], [0, 3], []])


def test_each_entry_once_per_text() -> None:
    text = " ".join(["dog"] * 1000) + " , dog . dog"
    assert_all([text, text], ["dog", "dog dog"], [[0, 1], [0, 1]])


def test_none_text() -> None:
    assert_all([None], ["dog"], [[]])
    assert_all([None, "dog", None, None, "a dog"], ["dog", "a"], [[], [0], [], [], [0, 1]])
    assert_all([None, "DOG"], ["dog"], [[], [0]], "case_insensitive")


@pytest.mark.parametrize(
    ("text", "entries", "expected"),
    [
        ("猫と犬 猫", ["猫", "犬", "猫と犬", "と"], [0, 2]),
        ("🐶 dog 🐈‍⬛ cat", ["🐶", "🐈", "🐈‍⬛", "dog", "cat", "🐶 dog"], [0, 2, 3, 4, 5]),
        ("cafe\u0301 café", ["cafe\u0301", "café", "cafe"], [0, 1]),  # combining acute vs precomposed
        ("שלום dog עולם", ["שלום", "עולם", "dog", "שלום dog"], [0, 1, 2, 3]),
        ("مرحبا بالعالم", ["مرحبا", "بالعالم", "مرحبا بالعالم"], [0, 1, 2]),
        ("𝔘𝔫𝔦 Zürich", ["𝔘𝔫𝔦", "Zürich", "Zurich"], [0, 1]),
        ("naïve，dog", ["naïve", "dog", "naïve，dog"], [2]),  # a full-width comma is not wrapped
    ],
)
def test_non_ascii(text: str, entries: list[str], expected: list[int]) -> None:
    assert_all([text], entries, [expected])
    # Non-ASCII texts before other texts in one batch: the text of each match is found by
    # character offsets, so a backend that reported byte offsets would shift later texts.
    batch = [text, "dog", text * 3, "cat dog", ""]
    pool = [*entries, "dog", "cat"]
    assert_all(batch, pool, [reference(t, pool) for t in batch])


def test_empty_strings() -> None:
    assert_all(["", "", "dog"], ["dog"], [[], [], [0]])
    assert_all([""], ["dog"], [[]], "case_insensitive")
    for backend in BACKENDS:
        offsets, values = Matcher(["dog"], backend=backend).match_batch([])
        check_csr(offsets, values, 0, 1)


def test_very_long_text() -> None:
    long_text = "dog cat " * (1 << 17) + "rare bird"  # about 1 MB
    assert len(long_text) > 1_000_000
    entries = ["dog", "cat", "cat dog", "rare bird", "bird", "absent", "dog dog"]
    expected = [0, 1, 2, 3, 4]
    assert_all([long_text], entries, [expected])
    assert_all(["absent", long_text, "dog dog"], entries, [[5], expected, [0, 6]])


def test_no_match_crosses_texts_in_a_batch() -> None:
    """Texts are joined with a newline for one automaton pass; nothing may span two texts."""
    entries = ["dog cat", "dog\ncat", "dog \n cat", "dog", "cat", "\n", " "]
    texts = ["dog", "cat", "dog\n", "\ncat", "a dog", "cat b", None, "dog", "", "cat"]
    assert_all(texts, entries, [[3], [4], [3], [4], [3], [4], [], [3], [], [4]])


# --------------------------------------------------------------------------- CSR structure


@pytest.mark.parametrize("backend", BACKENDS)
def test_match_batch_csr(backend: str) -> None:
    entries = ["dog", "cat", "a", "dog", "the cat", "b"]
    texts = ["the cat and a dog", None, "", "cat cat cat", "nothing here", "b a dog cat", "dog"]
    offsets, values = Matcher(entries, backend=backend).match_batch(texts)
    check_csr(offsets, values, len(texts), len(entries))
    assert offsets.tolist() == [0, 5, 5, 5, 6, 6, 11, 13]
    assert rows(offsets, values) == [[0, 1, 2, 3, 4], [], [], [1], [], [0, 1, 2, 3, 5], [0, 3]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entries", [[], ["a\nb", "\t", "x\ry"]])
def test_match_batch_without_patterns(backend: str, entries: list[str]) -> None:
    """No entry can match (none given, or all hold a character that spacing removes)."""
    matcher = Matcher(entries, backend=backend)
    for texts in ([], ["a b", None, "x y"]):
        offsets, values = matcher.match_batch(texts)
        check_csr(offsets, values, len(texts), max(len(entries), 1))
        assert offsets.tolist() == [0] * (len(texts) + 1)


def test_unknown_mode_and_backend() -> None:
    with pytest.raises(ValueError, match="unknown match mode"):
        Matcher(["dog"], mode="fuzzy")
    with pytest.raises(ValueError, match="unknown matcher backend"):
        Matcher(["dog"], backend="regex")


# --------------------------------------------------------------------------- random agreement

# A small alphabet so that random entries often occur in random texts: letters of two cases,
# spaces, every wrapped mark, the characters spacing turns into spaces, marks that are not
# wrapped and non-ASCII letters.
ALPHABET = [
    "a", "b", "A", "é", "É", "🐶", " ", " ", " ", "-", "(", "\xa0", "\t", "\n", "\r",
    ",", ".", ";", ":", "?", "!", "`",
]


def random_string(rng: random.Random, max_len: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, max_len)))


def random_entry(rng: random.Random) -> str:
    # Mostly words of the text alphabet, sometimes anything (wrapped marks, newlines, blanks).
    if rng.random() < 0.7:
        return " ".join(
            "".join(rng.choice("abAé") for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 2))
        )
    return random_string(rng, 4)


def test_random_texts_agree_with_reference() -> None:
    rng = random.Random(20240611)
    np_rng = np.random.default_rng(20240611)
    cases = 3000
    matched = 0
    for case in range(cases):
        entries = [random_entry(rng) for _ in range(int(np_rng.integers(1, 12)))]
        if rng.random() < 0.3:  # the same string under several ids
            entries += rng.sample(entries, k=rng.randint(1, len(entries)))
        texts: list[str | None] = [random_string(rng, 16) for _ in range(int(np_rng.integers(1, 8)))]
        if case % 3 == 0:  # a newline inside a text of a batch: nothing may cross into the next text
            texts = [t + "\n" + random_string(rng, 6) for t in texts]
        if rng.random() < 0.1:
            texts.insert(rng.randint(0, len(texts)), None)
        mode = MODES[case % 2]
        expected = [reference(t, entries, mode) for t in texts]
        matched += sum(map(len, expected))
        # pipeline.stages.match's own reference loop and spacing (the benchmarks' baseline) agree too.
        assert [reference_match(t, entries, mode) for t in texts] == expected, (mode, entries, texts)
        for t in texts:
            if t is not None:
                assert spaced(t, mode) == metaclip_spaced(t, mode == "case_insensitive"), (mode, t)
        for backend in BACKENDS:
            offsets, values = Matcher(entries, mode, backend).match_batch(texts)
            check_csr(offsets, values, len(texts), len(entries))
            assert rows(offsets, values) == expected, (backend, mode, entries, texts)
    assert matched > cases  # the alphabet is small enough that most cases match something


# --------------------------------------------------------------------------- real captions

_FLICKR_LINE = re.compile(r"^\S+#\d+\s+(.*?)\s*$")  # `img.jpg#k<TAB or space>caption`


def real_captions() -> dict[str, list[str]]:
    """Captions of the four real sources in ../shared (skips when absent)."""
    import pyarrow.parquet as pq

    laion = anchor("img2dataset/tests/test_files/test_10000.parquet")
    cc3m = anchor("M2IB/Validation_GCC-1.1.0-Validation.tsv")
    coco = anchor("Bangla_Image_Captioning/captions_val2017.json")
    flickr = anchor("image_caption_generator/Flickr8k.token.txt")
    out = {"laion": [t for t in pq.read_table(laion, columns=["TEXT"]).column("TEXT").to_pylist() if t is not None]}
    with open(cc3m, encoding="utf-8") as f:
        out["cc3m"] = [line.rstrip("\r\n").split("\t")[0] for line in f if line.strip()]
    with open(coco, encoding="utf-8") as f:
        out["coco"] = [a["caption"] for a in json.load(f)["annotations"]]
    with open(flickr, encoding="utf-8") as f:
        out["flickr8k"] = [m.group(1) for m in map(_FLICKR_LINE.match, f) if m]
    return out


@pytest.fixture(scope="module")
def real() -> dict[str, list]:
    """2,000 real captions (all four sources), a real-size metadata list and the reference
    loop's answer for every caption, built once for the module."""
    from pipeline.concepts.metadata import corpus_ngrams, numbers, wordnet_lemmas

    by_source = real_captions()
    rng = random.Random(7)
    sample = [c for captions in by_source.values() for c in rng.sample(captions, 475)]
    # LAION alt-text is the messy source: make sure its odd characters are in the sample.
    odd = [c for c in by_source["laion"] if re.search(r"[\t\n\r`]|[^\x00-\x7f]", c)]
    sample += rng.sample(odd, 100)
    rng.shuffle(sample)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "captions.txt")
        with open(path, "w", encoding="utf-8") as f:
            for captions in by_source.values():
                for c in captions:
                    f.write(c.replace("\r", " ").replace("\n", " ") + "\n")
        unigrams, bigrams = corpus_ngrams([path], min_unigram_count=10, min_bigram_pmi=3.0, min_bigram_count=5)
    # Concatenated, not de-duplicated: a word that is a WordNet lemma and a corpus unigram
    # appears under two ids, which both must match.
    entries = numbers() + wordnet_lemmas() + unigrams + bigrams
    start = time.perf_counter()
    expected = reference_ids(sample, entries, "metaclip")
    print(f"reference loop: {len(sample)} captions x {len(entries)} entries in {time.perf_counter() - start:.1f}s")
    return {"captions": sample, "entries": entries, "expected": expected}


_PATTERNS: list[str] = []


def _set_patterns(patterns: list[str]) -> None:
    _PATTERNS[:] = patterns


def _reference_chunk(texts: list[str], mode: str) -> list[list[int]]:
    """tests/references.py's metaclip_match for each text, with the " e " patterns built once per process."""
    out = []
    for t in texts:
        s = metaclip_spaced(t, case_insensitive=mode == "case_insensitive")
        out.append([i for i, p in enumerate(_PATTERNS) if p in s])
    return out


def reference_ids(texts: Sequence[str], entries: Sequence[str], mode: str) -> list[list[int]]:
    """metaclip_match on every text (the same plain loop over all entries), split over the
    machine's cores because 2,000 captions x 150k entries is half a minute on one."""
    if mode == "case_insensitive":
        patterns = [f" {e.lower()} " for e in entries]
    else:
        patterns = [f" {e} " for e in entries]
    workers = max(1, min(2, os.cpu_count() or 1))
    size = -(-len(texts) // (4 * workers))
    chunks = [list(texts[i : i + size]) for i in range(0, len(texts), size)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_set_patterns, initargs=(patterns,)) as pool:
        return [r for part in pool.map(_reference_chunk, chunks, [mode] * len(chunks)) for r in part]


def assert_matchers_agree(captions: list[str], entries: list[str], expected: list[list[int]], mode: str) -> None:
    for backend in BACKENDS:
        matcher = Matcher(entries, mode, backend)
        offsets, values = matcher.match_batch(captions)
        check_csr(offsets, values, len(captions), len(entries))
        got = rows(offsets, values)
        bad = [(captions[i], got[i], expected[i]) for i in range(len(captions)) if got[i] != expected[i]]
        assert not bad, (backend, mode, len(bad), bad[:3])
        # Many small batches give the same answer as one large one.
        small = [r for i in range(0, len(captions), 37) for r in rows(*matcher.match_batch(captions[i : i + 37]))]
        assert small == expected, (backend, mode)


@pytest.mark.slow
@pytest.mark.shared
def test_real_captions_agree_with_reference(real: dict[str, list]) -> None:
    captions, entries, expected = real["captions"], real["entries"], real["expected"]
    assert len(captions) >= 2000 and len(entries) >= 100_000
    # The precomputed-pattern loop is metaclip_match itself, checked here on a few captions;
    # pipeline.stages.match's reference loop gives the same.
    assert expected[:3] == [metaclip_match(t, entries) for t in captions[:3]]
    assert expected[:3] == [reference_match(t, entries) for t in captions[:3]]
    assert sum(map(len, expected)) > 5 * len(captions)  # real captions match many entries
    assert sum(1 for r in expected if not r) < len(captions) // 20
    # Some caption matches one string under two ids (a WordNet lemma that is also a unigram).
    assert any(len(r) > len({entries[i] for i in r}) for r in expected)
    assert_matchers_agree(captions, entries, expected, "metaclip")


@pytest.mark.slow
@pytest.mark.shared
def test_real_captions_case_insensitive(real: dict[str, list]) -> None:
    captions, entries = real["captions"][:300], real["entries"]
    expected = reference_ids(captions, entries, "case_insensitive")
    assert expected[:3] == [metaclip_match(t, entries, case_insensitive=True) for t in captions[:3]]
    # Lower-casing finds more: every metaclip match is also a case-insensitive one.
    metaclip = real["expected"][:300]
    assert all(set(a) <= set(b) for a, b in zip(metaclip, expected, strict=True))
    assert sum(map(len, expected)) > sum(map(len, metaclip))
    assert_matchers_agree(captions, entries, expected, "case_insensitive")


# --------------------------------------------------------------------------- per-process cache


@pytest.fixture
def empty_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh matcher cache for the test, the process's own restored afterwards."""
    monkeypatch.setattr(match_module, "_CACHE", {})


@pytest.mark.usefixtures("empty_cache")
def test_get_matcher_builds_once_per_key() -> None:
    calls: list[str] = []

    def entries_a() -> list[str]:
        calls.append("a")
        return ["dog", "cat"]

    def entries_b() -> list[str]:
        calls.append("b")
        return ["bird"]

    first = get_matcher("meta-a", entries_a, "metaclip", "ahocorasick_rs")
    second = get_matcher("meta-a", entries_a, "metaclip", "ahocorasick_rs")
    assert second is first and calls == ["a"]
    assert first.match("a dog and a cat") == [0, 1]

    other = get_matcher("meta-b", entries_b, "metaclip", "ahocorasick_rs")
    assert other is not first and calls == ["a", "b"]
    assert other.match("a bird") == [0]
    assert get_matcher("meta-b", entries_b, "metaclip", "ahocorasick_rs") is other and calls == ["a", "b"]

    # Mode and backend are part of the key: each makes its own automaton.
    ci = get_matcher("meta-b", entries_b, "case_insensitive", "ahocorasick_rs")
    assert ci.mode == "case_insensitive" and calls == ["a", "b", "b"]
    py = get_matcher("meta-b", entries_b, "case_insensitive", "pyahocorasick")
    assert py.backend == "pyahocorasick" and calls == ["a", "b", "b", "b"]
    assert py.match("A BIRD") == [0]


@pytest.mark.usefixtures("empty_cache")
def test_get_matcher_keeps_two_lists_alternating() -> None:
    calls: list[str] = []

    def make(name: str):
        def entries() -> list[str]:
            calls.append(name)
            return [name]

        return entries

    for key in ("a", "b", "a", "b", "a"):
        get_matcher(key, make(key), "metaclip", "ahocorasick_rs")
    assert calls == ["a", "b"], "alternating between two lists builds each once"
    get_matcher("c", make("c"), "metaclip", "ahocorasick_rs")  # evicts the least recently used, b
    get_matcher("a", make("a"), "metaclip", "ahocorasick_rs")
    get_matcher("b", make("b"), "metaclip", "ahocorasick_rs")
    assert calls == ["a", "b", "c", "b"]


@pytest.mark.usefixtures("empty_cache")
def test_get_matcher_threads_build_once() -> None:
    from concurrent.futures import ThreadPoolExecutor

    calls: list[int] = []

    def entries() -> list[str]:
        calls.append(1)
        time.sleep(0.05)
        return ["dog"]

    with ThreadPoolExecutor(8) as pool:
        built = list(pool.map(lambda _: get_matcher("k", entries, "metaclip", "pyahocorasick"), range(16)))
    assert len(calls) == 1 and all(m is built[0] for m in built)


# --------------------------------------------------------------------------- lone surrogates


def test_lone_surrogate_ahocorasick_rs() -> None:
    # ahocorasick_rs encodes the haystack as UTF-8; the kernel replaces lone surrogates
    # (same length, so offsets hold) rather than raise.
    text = json.loads('"\\ud83d dog"')
    for mode in MODES:
        assert_all([text, "dog"], ["dog"], [[0], [0]], mode)
