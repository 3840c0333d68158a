"""Concept metadata: sources, build order, write/load round trip, errors and the CLI hook."""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os

import pytest

from pipeline.concepts import metadata
from pipeline.concepts.cli import add_cli
from pipeline.concepts.metadata import (
    Concepts,
    MetadataError,
    build_metadata,
    corpus_ngrams,
    load_concepts,
    numbers,
    read_titles,
    wordnet_lemmas,
    write_metadata,
)
from pipeline.kernels.matcher import Matcher
from tests.references import MARK_NAMES, METACLIP_WRAPPED_MARKS

WORDNET_DIR = "/usr/share/wordnet"

# A corpus small enough to count by hand. Tokens split on whitespace and on , . ; : ? ! `
# (which also end a bigram run); a token of punctuation only ("-") is dropped and ends a run.
#   "new york is big."        -> [new york is big]
#   "I love new york, really!" -> [I love new york] [really]
#   "new york - new york"     -> [new york] [new york]
#   "price 3.5"               -> [price 3] [5]
#   "york new" (second file)  -> [york new]
# Unigram counts: new 5, york 5, and is, big, I, love, really, price, 3, 5 once each: N = 18.
# Bigram counts: (new, york) 4; (york, is), (is, big), (I, love), (love, new), (price, 3),
# (york, new) once each. "york - new" and "york, really" are not bigrams.
CORPUS_A = "new york is big.\nI love new york, really!\nnew york - new york\nprice 3.5\n"
CORPUS_B = "york new\n\n"
ALL_UNIGRAMS = ["3", "5", "I", "big", "is", "love", "new", "price", "really", "york"]
# log2( c(new york) * N / (c(new) * c(york)) ) = log2(4 * 18 / 25) = log2(2.88) ~= 1.526
PMI_NEW_YORK = math.log2(4 * 18 / (5 * 5))


@pytest.fixture
def corpus(tmp_path) -> list[str]:
    a = tmp_path / "a.txt"
    a.write_text(CORPUS_A, encoding="utf-8")
    b = tmp_path / "b.txt.gz"  # the second file is gzipped: both kinds are read
    with gzip.open(b, "wt", encoding="utf-8") as f:
        f.write(CORPUS_B)
    return [str(a), str(b)]


@pytest.fixture
def titles(tmp_path) -> str:
    path = tmp_path / "titles.txt"
    path.write_text("  Paris \n\nnew york\n3\nThe Beatles\n", encoding="utf-8")
    return str(path)


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --------------------------------------------------------------------------- sources


def test_numbers_are_0_to_99():
    got = numbers()
    assert got[0] == "0" and got[-1] == "99" and len(got) == 100
    assert len(set(got)) == 100 and "42" in got and "100" not in got


@pytest.fixture(scope="module")
def lemmas() -> list[str]:
    if not os.path.isfile(os.path.join(WORDNET_DIR, "data.noun")):
        pytest.skip(f"WordNet not installed at {WORDNET_DIR} (apt-get install wordnet-base)")
    return wordnet_lemmas(WORDNET_DIR)


@pytest.mark.slow
def test_wordnet_lemmas_read_for_real(lemmas):
    # WordNet 3.0: 117,659 synsets; 147,306 lemma strings in lower case (the index files),
    # 148,730 with case kept as the data files give it.
    assert 145_000 <= len(lemmas) <= 152_000
    assert lemmas == sorted(set(lemmas))
    got = set(lemmas)
    for known in ("dog", "hot dog", "goldfish", "Carassius auratus", "New York", "U.S.", "3"):
        assert known in got, known
    # Case is kept as WordNet has it: the city is "New York", never lower-cased here.
    assert "new york" not in got
    assert not any("_" in x for x in lemmas)
    # nltk strips the adjective markers "(a)", "(p)", "(ip)" from data.adj.
    assert "galore" in got and not any(x.endswith(("(a)", "(p)", "(ip)")) for x in lemmas)


def test_wordnet_data_file_reader_gives_nltks_names(lemmas):
    """The project reads the data files itself (a second, not nltk's minute): same synsets, same
    lemma names, and nltk's synset id is the first name lower-cased. Checked on a seeded sample."""
    import random

    from pipeline.concepts.metadata import open_wordnet, wordnet_synsets

    synsets = list(wordnet_synsets(WORDNET_DIR))
    assert len(synsets) == 117_659
    tag = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
    with open_wordnet(WORDNET_DIR) as wn:
        for pos, offset, names in random.Random(0).sample(synsets, 400):
            synset = wn.synset_from_pos_and_offset(tag[pos], offset)
            assert synset.lemma_names() == names
            assert synset.name().rsplit(".", 2)[0] == names[0].lower()


@pytest.mark.slow
def test_wordnet_synset_names_are_metaclips_list(lemmas):
    names = wordnet_lemmas(WORDNET_DIR, source="synset-names")
    # one lowercase head word per synset id (new_york.n.01 -> "new york"), fewer than lemmas
    assert 80_000 <= len(names) <= 90_000
    got = set(names)
    assert "new york" in got and "dog" in got and "New York" not in got
    lowered = {x.lower() for x in lemmas}
    assert sum(n in lowered for n in names) / len(names) > 0.99  # head words are lemmas, lower-cased
    with pytest.raises(MetadataError, match="unknown WordNet source"):
        wordnet_lemmas(WORDNET_DIR, source="nouns")


def test_wordnet_missing_folder_names_the_fix(tmp_path):
    with pytest.raises(MetadataError, match=r"not found: .*nope.*apt-get install wordnet-base"):
        wordnet_lemmas(str(tmp_path / "nope"))


def test_wordnet_incomplete_folder_lists_missing_files(tmp_path):
    (tmp_path / "data.noun").write_text("", encoding="utf-8")
    with pytest.raises(MetadataError, match=r"lacks data\.verb.*apt-get install wordnet-base") as exc:
        wordnet_lemmas(str(tmp_path))
    assert "data.noun" not in str(exc.value)


def test_corpus_unigram_counts(corpus):
    unigrams, _ = corpus_ngrams(corpus, min_unigram_count=5, min_bigram_pmi=0.0)
    assert unigrams == ["new", "york"]
    unigrams, _ = corpus_ngrams(corpus, min_unigram_count=6, min_bigram_pmi=0.0)
    assert unigrams == []
    unigrams, _ = corpus_ngrams(corpus, min_unigram_count=1, min_bigram_pmi=0.0)
    assert unigrams == ALL_UNIGRAMS  # "-" dropped, "3.5" split, case kept ("I")


def test_corpus_bigram_pmi_threshold(corpus):
    assert 1.52 < PMI_NEW_YORK < 1.53
    _, bigrams = corpus_ngrams(corpus, 100, min_bigram_pmi=1.52, min_bigram_count=2)
    assert bigrams == ["new york"]
    _, bigrams = corpus_ngrams(corpus, 100, min_bigram_pmi=1.53, min_bigram_count=2)
    assert bigrams == []
    # "new york" occurs 4 times: a minimum count of 5 skips it whatever its PMI.
    _, bigrams = corpus_ngrams(corpus, 100, min_bigram_pmi=-100.0, min_bigram_count=5)
    assert bigrams == []


def test_corpus_bigrams_with_rare_pairs_allowed(corpus):
    # With every pair counted: (york, is) and (love, new) have log2(18/5) ~= 1.85; (is, big),
    # (I, love) and (price, 3) log2(18) ~= 4.17; (york, new) log2(18/25) < 0 is left out.
    _, bigrams = corpus_ngrams(corpus, 100, min_bigram_pmi=1.5, min_bigram_count=1)
    assert bigrams == ["I love", "is big", "love new", "new york", "price 3", "york is"]
    _, bigrams = corpus_ngrams(corpus, 100, min_bigram_pmi=2.0, min_bigram_count=1)
    assert bigrams == ["I love", "is big", "price 3"]


# MISSION.md's wrapped marks, written out in tests/references.py (not taken from pipeline): each
# splits tokens and ends a run.
WRAPPED_MARKS = [pytest.param(m, id=n) for m, n in zip(METACLIP_WRAPPED_MARKS, MARK_NAMES, strict=True)]


@pytest.mark.parametrize("mark", WRAPPED_MARKS)
def test_corpus_wrapped_marks_split_tokens_and_bigrams(tmp_path, mark):
    path = write(tmp_path, "c.txt", f"red{mark}green blue\n")
    unigrams, bigrams = corpus_ngrams([path], 1, min_bigram_pmi=-100.0, min_bigram_count=1)
    assert unigrams == ["blue", "green", "red"]
    assert bigrams == ["green blue"]  # "red green" spans the mark: the matcher never sees it
    # Every n-gram built from the line matches that line.
    assert Matcher(unigrams + bigrams).match(f"red{mark}green blue") == [0, 1, 2, 3]


@pytest.mark.parametrize("mark", ["-", "(", "'", "/", "\uff0c"])
def test_corpus_other_marks_stay_in_tokens(tmp_path, mark):
    path = write(tmp_path, "c.txt", f"red{mark}green blue\n")
    unigrams, bigrams = corpus_ngrams([path], 1, min_bigram_pmi=-100.0, min_bigram_count=1)
    assert unigrams == ["blue", f"red{mark}green"]
    assert bigrams == [f"red{mark}green blue"]


def test_corpus_errors(tmp_path):
    with pytest.raises(MetadataError, match="file not found: .*missing.txt"):
        corpus_ngrams([str(tmp_path / "missing.txt")], 1, 0.0)
    empty = write(tmp_path, "empty.txt", ", . ;\n\n")
    with pytest.raises(MetadataError, match="no tokens"):
        corpus_ngrams([empty], 1, 0.0)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(MetadataError, match="latin1.txt: not UTF-8"):
        corpus_ngrams([str(latin1)], 1, 0.0)
    with pytest.raises(MetadataError, match="min_unigram_count"):
        corpus_ngrams([empty], 0, 0.0)


def test_read_titles(titles):
    assert read_titles(titles) == ["Paris", "new york", "3", "The Beatles"]


# --------------------------------------------------------------------------- build


def test_build_metadata_order_and_dedup(corpus, titles):
    entries = build_metadata(
        numbers=True, wordnet=False, corpus=corpus, min_unigram_count=1,
        min_bigram_pmi=1.52, min_bigram_count=2, titles=titles,
    )
    unigrams_new = [u for u in ALL_UNIGRAMS if u not in ("3", "5")]  # numbers came first
    assert entries == numbers() + unigrams_new + ["new york"] + ["Paris", "The Beatles"]
    assert len(entries) == len(set(entries))


def test_build_metadata_source_order_with_wordnet(monkeypatch, corpus, titles):
    # WordNet itself is tested above; here a stand-in checks where its block goes.
    monkeypatch.setattr(metadata, "wordnet_lemmas", lambda wordnet_dir=None, source="lemmas": ["dog", "new", "7"])
    entries = build_metadata(
        numbers=True, wordnet=True, corpus=corpus, min_unigram_count=5,
        min_bigram_pmi=1.0, min_bigram_count=2, titles=titles,
    )
    assert entries == numbers() + ["dog", "new", "york", "new york", "Paris", "The Beatles"]


def test_build_metadata_errors(tmp_path):
    with pytest.raises(MetadataError, match="no source selected"):
        build_metadata(numbers=False, wordnet=False)
    blank = write(tmp_path, "blank.txt", "\n  \n")
    with pytest.raises(MetadataError, match="empty.*titles"):
        build_metadata(numbers=False, wordnet=False, titles=blank)


# --------------------------------------------------------------------------- write and load


def test_write_then_load_round_trip(tmp_path):
    entries = ["0", "dog", "new york", "Carassius auratus", "café", "東京", " padded "]
    out = tmp_path / "sub" / "metadata.json"
    write_metadata(entries, str(out))
    raw = out.read_bytes()
    assert "東京".encode() in raw  # UTF-8, not \u escapes (ensure_ascii=False)
    assert json.loads(raw) == entries
    assert os.listdir(out.parent) == ["metadata.json"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any file, not 0600
    assert load_concepts(str(out)) == Concepts(entries=tuple(entries), synonyms=None)


def test_write_refuses_what_cannot_be_loaded(tmp_path):
    out = tmp_path / "metadata.json"
    with pytest.raises(MetadataError, match="appears twice"):
        write_metadata(["dog", "dog"], str(out))
    with pytest.raises(MetadataError, match="empty"):
        write_metadata([], str(out))
    assert not out.exists()


def test_load_synonyms_object(tmp_path):
    path = write(
        tmp_path, "classes.json",
        json.dumps({"tench": ["Tinca tinca"], "crane": ["crane"], "crane (machine)": ["crane", "derrick"]}),
    )
    got = load_concepts(path)
    assert got.entries == ("tench", "Tinca tinca", "crane", "crane (machine)", "derrick")
    assert got.synonyms == {
        "tench": ("tench", "Tinca tinca"),
        "crane": ("crane",),
        "crane (machine)": ("crane (machine)", "crane", "derrick"),
    }
    assert all(s in got.entries for syns in got.synonyms.values() for s in syns)


def test_load_plain_text(tmp_path):
    path = write(tmp_path, "concepts.txt", "\ufeffdog\n\ncat\r\n  hot dog  \n")
    assert load_concepts(path) == Concepts(entries=("dog", "cat", "hot dog"))


def test_load_json_without_json_suffix(tmp_path):
    path = write(tmp_path, "metadata", '["dog", "cat"]')
    assert load_concepts(path).entries == ("dog", "cat")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.json", '["dog", ', r"bad\.json: not valid JSON \(.* at line 1 column"),
        ("bad.json", "dog\ncat\n", r"bad\.json: not valid JSON"),
        ("types.json", '["dog", 3]', r"types\.json: entry 1 is int 3, expected a string"),
        ("nested.json", '["dog", ["cat"]]', r"entry 1 is list"),
        ("empty.json", "[]", r"empty\.json: the concept list is empty"),
        ("blank.json", '["dog", ""]', r"blank\.json: entry 1 is an empty or blank string"),
        ("dup.json", '["dog", "cat", "dog"]', r"'dog' appears twice \(entry 0 and 2\)"),
        ("scalar.json", '"dog"', r"JSON str, expected a list of strings or an object"),
        ("obj.json", "{}", r"obj\.json: the concept object is empty"),
        ("obj.json", '{"dog": "puppy"}', r"concept 'dog' maps to str, expected a list"),
        ("obj.json", '{"dog": ["puppy", 1]}', r"synonym 1 of 'dog' is int"),
        ("obj.json", '{"": ["x"]}', r"a concept name is an empty or blank string"),
        ("empty.txt", "\n\n", r"empty\.txt: the concept list is empty"),
        ("dup.txt", "dog\ncat\ndog\n", r"'dog' appears twice"),
    ],
)
def test_load_errors_name_file_and_problem(tmp_path, name, text, message):
    path = write(tmp_path, name, text)
    with pytest.raises(MetadataError, match=message) as exc:
        load_concepts(path)
    assert "\n" not in str(exc.value)


def test_load_missing_file_or_folder(tmp_path):
    with pytest.raises(MetadataError, match="file not found"):
        load_concepts(str(tmp_path / "nope.json"))
    with pytest.raises(MetadataError, match="is a folder"):
        load_concepts(str(tmp_path))


# --------------------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="curate")
    add_cli(p.add_subparsers(dest="command", required=True))
    return p


def test_cli_metadata_build_writes_file(tmp_path, corpus, titles, capsys):
    out = tmp_path / "run" / "metadata.json"
    args = parser().parse_args(
        ["metadata", "build", "--output", str(out), "--numbers", "--corpus", corpus[0],
         "--corpus", corpus[1], "--min-unigram-count", "5", "--min-bigram-pmi", "1.52",
         "--min-bigram-count", "2", "--titles", titles]
    )
    assert args.func(args) == 0
    entries = load_concepts(str(out)).entries
    assert entries == (*numbers(), "new", "york", "new york", "Paris", "The Beatles")
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1
    line = summary[0]
    for part in ("numbers 100", "unigrams 2", "bigrams 1", "titles 4", f"{len(entries)} distinct", str(out)):
        assert part in line, (part, line)


def test_cli_metadata_build_errors(tmp_path):
    p = parser()
    with pytest.raises(SystemExit):  # --output is required
        p.parse_args(["metadata", "build", "--numbers"])
    out = str(tmp_path / "m.json")
    args = p.parse_args(["metadata", "build", "--output", out])
    with pytest.raises(MetadataError, match="no source selected"):
        args.func(args)
    args = p.parse_args(["metadata", "build", "--output", out, "--wordnet-dir", str(tmp_path)])
    with pytest.raises(MetadataError, match="--wordnet-dir needs --wordnet"):
        args.func(args)
    assert not os.path.exists(out)


# --------------------------------------------------------------------------- one language's list (worldwide)

# German, counted by hand. Line 3 spells "schläft" decomposed (a + U+0308): a language build
# NFC-normalises lines first, so both spellings count as one word.
#   tokens: der 2, Hund 3, schläft 2, bellt 1, ein 1 (N = 9)
#   bigrams: (der, Hund) 2, (Hund, schläft) 2, (Hund, bellt) 1, (ein, Hund) 1
#   PMI(der Hund) = log2(2 * 9 / (2 * 3)) = log2(3) ~= 1.58 = PMI(Hund schläft)
CORPUS_DE = "der Hund schl\u00e4ft\nder Hund bellt\nein Hund schla\u0308ft\n"
# Titles: repeats, blank lines, "Café" composed and decomposed.
TITLES_DE = "Berlin\nHund\n\nBerlin\nCafe\u0301\n  Caf\u00e9 \n"
DE_LIST = ["Hund", "der", "schl\u00e4ft", "Hund schl\u00e4ft", "der Hund", "Berlin", "Caf\u00e9"]
NO_SPACE_CODES = ["zh", "ja", "th", "lo", "km", "my", "bo", "dz", "ryu", "zh-Hans", "zh_TW", "zh_yue", "ZH"]


def build_args(*argv: str) -> argparse.Namespace:
    return parser().parse_args(["metadata", "build", *argv])


def test_language_build_writes_the_folder_list_nfc_and_deduplicated(tmp_path, capsys):
    from pipeline.kernels.worldwide import load_language_metadata

    corpus = write(tmp_path, "de.txt", CORPUS_DE)
    titles = write(tmp_path, "titles.txt", TITLES_DE)
    folder = tmp_path / "meta"
    args = build_args(
        "--language", "de", "--output", str(folder), "--corpus", corpus, "--from-titles", titles,
        "--min-unigram-count", "2", "--min-bigram-pmi", "1.0", "--min-bigram-count", "2",
    )
    assert args.func(args) == 0
    assert os.listdir(folder) == ["de.json"]
    assert json.loads((folder / "de.json").read_text(encoding="utf-8")) == DE_LIST
    meta = load_language_metadata(str(folder))  # the match stage's reader
    assert meta.languages == ("de",) and list(meta.entries) == DE_LIST
    line = capsys.readouterr().out.strip()
    assert line.startswith("metadata de: unigrams 3, bigrams 2, titles 5; 7 distinct entries -> ")
    assert line.endswith(os.path.join("meta", "de.json"))


def test_plain_build_keeps_spellings_apart(tmp_path):
    # Without a language nothing is normalised (today's lists keep their ids): the decomposed
    # "schläft" is its own word, and neither spelling reaches a count of 2.
    corpus = write(tmp_path, "de.txt", CORPUS_DE)
    unigrams, _ = corpus_ngrams([corpus], 2, 1.0, 2)
    assert unigrams == ["Hund", "der"]


@pytest.mark.parametrize("code", NO_SPACE_CODES)
def test_no_space_language_refuses_corpus_mining(tmp_path, code):
    corpus = write(tmp_path, "c.txt", "ein Wort\n")  # the refusal is by code, before the corpus is read
    folder = tmp_path / "meta"
    args = build_args("--language", code, "--output", str(folder), "--corpus", corpus)
    with pytest.raises(MetadataError) as exc:
        args.func(args)
    message = str(exc.value)
    assert message.startswith(f"{code} is written without spaces")
    assert "--from-titles FILE" in message and "word segmentation is not done here" in message
    assert "\n" not in message
    assert not folder.exists()


@pytest.mark.parametrize("code", ["de", "en", "ko", "vi", "ar", "hi", "ru", "other", "zhx", "thai"])
def test_spaced_languages_are_not_in_the_no_space_set(code):
    assert not metadata.is_no_space_language(code)


@pytest.mark.parametrize("code", NO_SPACE_CODES)
def test_no_space_codes_are_in_the_set(code):
    assert metadata.is_no_space_language(code)


def test_no_space_language_list_from_titles_matches_inside_text(tmp_path, capsys):
    from pipeline.kernels.worldwide import WorldMatcher, load_language_metadata

    folder = tmp_path / "meta"
    de = build_args("--language", "de", "--output", str(folder), "--corpus", write(tmp_path, "de.txt", CORPUS_DE),
                    "--min-unigram-count", "2", "--min-bigram-pmi", "1.0", "--min-bigram-count", "2")
    assert de.func(de) == 0
    zh = build_args("--language", "zh", "--output", str(folder), "--from-titles",
                    write(tmp_path, "zh.txt", "猫\n东京\n猫\n\n 狗 \n"))
    assert zh.func(zh) == 0
    assert json.loads((folder / "zh.json").read_text(encoding="utf-8")) == ["猫", "东京", "狗"]
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out.startswith("metadata zh: titles 4; 3 distinct entries (written without spaces: entries match inside runs of text)")
    meta = load_language_metadata(str(folder))
    # Global ids: languages in code order, de's 5 entries are 0-4, zh's 5-7.
    assert meta.languages == ("de", "zh") and meta.starts == (0, 5, 8)
    offsets, values = WorldMatcher(meta).match_batch(
        ["一只猫在东京睡觉", "der Hund schl\u00e4ft", "一只猫"], ["zh", "de", "de"]
    )
    got = [values[offsets[i] : offsets[i + 1]].tolist() for i in range(3)]
    assert got == [[5, 6], [0, 1, 2, 3, 4], []]  # a zh caption matched as de finds nothing


@pytest.mark.parametrize(
    ("code", "text", "share"),
    [("yue", "一只猫在睡觉 两只狗\n", "100%"), ("jpn", "ねこがすき いぬもすき\n", "100%"), ("wuu", "猫猫 a\n", "67%")],
)
def test_corpus_mostly_in_no_space_scripts_is_refused_whatever_the_code(tmp_path, code, text, share):
    args = build_args("--language", code, "--output", str(tmp_path / "m"), "--corpus", write(tmp_path, "c.txt", text),
                      "--min-unigram-count", "1")
    with pytest.raises(MetadataError, match=f"^the --corpus given for {code} is {share} letters of scripts written "
                       "without spaces .*--from-titles FILE"):
        args.func(args)


def test_no_space_script_share(tmp_path):
    # Letters and marks only: digits, spaces and punctuation are not counted.
    assert metadata.no_space_script_share([write(tmp_path, "a.txt", "ab猫, 12 。\n")]) == pytest.approx(1 / 3)
    assert metadata.no_space_script_share([write(tmp_path, "b.txt", "123 ...\n")]) == 0.0
    # Thai vowel signs are combining marks of the Thai block; Hangul is spaced.
    assert metadata.no_space_script_share([write(tmp_path, "c.txt", "แมว 고양이\n")]) == pytest.approx(3 / 6)


def test_corpus_with_a_few_no_space_words_is_mined(tmp_path):
    text = "ein Hund namens 猫 schläft\n" * 2
    entries = build_metadata(
        numbers=False, wordnet=False, corpus=[write(tmp_path, "c.txt", text)], min_unigram_count=2,
        min_bigram_pmi=100.0, min_bigram_count=2, language="de",
    )
    assert entries == ["Hund", "ein", "namens", "schläft", "猫"]
    # Exactly half is not "mostly": mined (the whitespace token "猫猫" is kept as it is).
    half = build_metadata(numbers=False, wordnet=False, corpus=[write(tmp_path, "h.txt", "猫猫 ab\n")],
                          min_unigram_count=1, language="wuu")
    assert half == ["ab", "猫猫"]


def test_language_build_wordnet_is_english_only(tmp_path, monkeypatch):
    monkeypatch.setattr(metadata, "wordnet_lemmas", lambda wordnet_dir=None, source="lemmas": ["dog", "Cafe\u0301"])
    with pytest.raises(MetadataError, match=r"^--wordnet gives English WordNet 3\.0 lemmas; they are not a de list"):
        build_metadata(numbers=False, wordnet=True, language="de")
    assert build_metadata(numbers=False, wordnet=True, language="en") == ["dog", "Caf\u00e9"]
    assert build_metadata(numbers=True, wordnet=True, language="en-GB")[100:] == ["dog", "Caf\u00e9"]


@pytest.mark.parametrize("code", ["", "../de", "_de", ".de", "de.json", "de/fr", "d e", "de-", "x" * 33, "zh–Hans"])
def test_language_code_must_be_a_file_name_the_match_stage_reads(tmp_path, code):
    args = build_args("--language", code, "--output", str(tmp_path / "m"), "--numbers")
    with pytest.raises(MetadataError, match="is not a language code"):
        args.func(args)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("code", ["en", "zh-Hans", "zh_yue", "be-tarask", "other", "pt-BR"])
def test_language_codes_accepted(tmp_path, code):
    args = build_args("--language", code, "--output", str(tmp_path / "m"), "--numbers")
    assert args.func(args) == 0
    assert json.loads((tmp_path / "m" / f"{code}.json").read_text()) == [str(i) for i in range(100)]


def test_language_build_output_errors(tmp_path):
    titles = write(tmp_path, "t.txt", "Hund\n")
    args = build_args("--language", "de", "--output", str(tmp_path / "de.json"), "--from-titles", titles)
    with pytest.raises(MetadataError, match=r"the output is the metadata folder \(the list goes to FOLDER/de\.json\)"):
        args.func(args)
    afile = write(tmp_path, "meta", "x")
    args = build_args("--language", "de", "--output", afile, "--from-titles", titles)
    with pytest.raises(MetadataError, match="is a file"):
        args.func(args)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "de.txt").write_text("Katze\n", encoding="utf-8")
    args = build_args("--language", "de", "--output", str(folder), "--from-titles", titles)
    with pytest.raises(MetadataError, match=r"de\.txt exists: the match stage would find two de lists"):
        args.func(args)
    assert sorted(os.listdir(folder)) == ["de.txt"] and not (tmp_path / "de.json").exists()


def test_language_build_replaces_its_own_list_only(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "fr.json").write_text('["chat"]', encoding="utf-8")
    (folder / "de.json").write_text('["alt"]', encoding="utf-8")
    args = build_args("--language", "de", "--output", str(folder), "--from-titles", write(tmp_path, "t.txt", "Hund\n"))
    assert args.func(args) == 0
    assert json.loads((folder / "de.json").read_text()) == ["Hund"]
    assert json.loads((folder / "fr.json").read_text()) == ["chat"]
    assert sorted(os.listdir(folder)) == ["de.json", "fr.json"]
