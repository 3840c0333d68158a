"""Reading every WordNet 3.0 synset's lemma names: the project's data-file reader vs nltk's reader.

Both read the same database folder (Debian's wordnet-base by default) and must give the same
names for every synset; the script checks that, then prints each one's best of `--repeat` wall
times and the ratio.

    .venv/bin/python bench/bench_wordnet.py [--wordnet-dir /usr/share/wordnet] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TAG = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}


def with_project(wordnet_dir: str | None) -> dict[tuple[str, int], list[str]]:
    from pipeline.concepts.metadata import wordnet_synsets

    return {(TAG[pos], offset): names for pos, offset, names in wordnet_synsets(wordnet_dir)}


def with_nltk(wordnet_dir: str | None) -> dict[tuple[str, int], list[str]]:
    from pipeline.concepts.metadata import open_wordnet

    with open_wordnet(wordnet_dir) as wn:
        # nltk tags satellite adjectives "s"; they live in data.adj like the others.
        return {("a" if s.pos() == "s" else s.pos(), s.offset()): s.lemma_names() for s in wn.all_synsets()}


def best_of(fn, repeat: int, *args):
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wordnet-dir", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    ours_s, ours = best_of(with_project, args.repeat, args.wordnet_dir)
    nltk_s, theirs = best_of(with_nltk, args.repeat, args.wordnet_dir)
    if ours != theirs:
        differ = sum(ours.get(k) != v for k, v in theirs.items()) + len(ours.keys() - theirs.keys())
        raise SystemExit(f"the readers disagree on {differ} synsets")
    print(f"synsets: {len(ours)} (same lemma names from both readers)")
    print(f"project data-file reader: {ours_s:.2f}s   nltk reader: {nltk_s:.2f}s   ratio nltk/project: {nltk_s / ours_s:.1f}x")


if __name__ == "__main__":
    main()
