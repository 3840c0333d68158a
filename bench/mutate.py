"""Mutation check: does the test suite notice when a kernel's meaning changes?

Each mutation is one small deliberate bug: an exact source fragment replaced by another. For
each, in a scratch copy of the working tree, the fragment is swapped in, the test files that
cover that module run (stopping at the first failure), and the fragment is put back. A mutation
is *caught* when some test fails; it *survived* when every test passed. The table at the end
names, per mutation, the first test that failed.

    python bench/mutate.py                 # every mutation (about 20 minutes on 2 cores)
    python bench/mutate.py --only semdedup # the mutations whose name contains 'semdedup'
    python bench/mutate.py --list          # names and files, nothing run

Not part of `make test` (too slow); `make mutate` runs it. Exit status 1 when any mutation
survived, 2 when a mutation's fragment is no longer in its file (the list needs updating) or the
unmutated tests fail.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The tests that cover each module, fastest (Spark-free) files first so that -x stops early.
MATCH_TESTS = ("tests/test_match_kernel.py", "tests/test_text_path.py")
BALANCE_TESTS = ("tests/test_text_path.py",)
PRUNE_TESTS = ("tests/test_prune.py",)
LEDGER_TESTS = ("tests/test_accounting.py", "tests/test_text_path.py")
CLUSTER_TESTS = ("tests/test_cluster.py",)
GUARD_TESTS = ("tests/test_urlguard.py", "tests/test_download.py")
WORLD_TESTS = ("tests/test_worldwide.py",)


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


MUTATIONS = (
    # --- MetaCLIP matching (MISSION.md, matching semantics) ---------------------------------
    Mutation("match-backtick", "pipeline/kernels/matcher.py", 'WRAPPED = ",.;:?!`"', 'WRAPPED = ",.;:?!"', MATCH_TESTS,
             "backtick no longer spaced"),
    Mutation("match-semicolon", "pipeline/kernels/matcher.py", 'WRAPPED = ",.;:?!`"', 'WRAPPED = ",.:?!`"', MATCH_TESTS,
             "';' no longer spaced"),
    Mutation("match-cr", "pipeline/kernels/matcher.py", '"\\r": " "', '"\\r": "\\r"', MATCH_TESTS,
             "carriage return no longer a space"),
    Mutation("match-ci-entries", "pipeline/kernels/matcher.py", "pattern = pad_entry(e.lower() if mode == \"case_insensitive\" else e, padding)",
             "pattern = pad_entry(e, padding)", MATCH_TESTS, "case-insensitive mode: entries not lowercased"),
    Mutation("match-ci-text", "pipeline/kernels/matcher.py", "(t.lower() if lower else t)", "t", MATCH_TESTS,
             "case-insensitive mode: texts not lowercased"),
    Mutation("match-once-per-text", "pipeline/kernels/matcher.py",
             "keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]", "keys = keys", MATCH_TESTS,
             "an entry found twice in a text listed twice"),
    # --- balancing (MISSION.md stage 5) ------------------------------------------------------
    Mutation("balance-tail-rule", "pipeline/kernels/sampling.py", "t = int(c[k]) + 1", "t = int(c[k])", BALANCE_TESTS,
             "tail threshold t = c[k] instead of c[k] + 1"),
    Mutation("balance-hash-entry", "pipeline/kernels/sampling.py", "c = splitmix64(b ^ (np.asarray(entry_ids, np.uint64) * _GOLDEN))",
             "c = splitmix64(b)", BALANCE_TESTS, "entry id dropped from the hash"),
    Mutation("balance-hash-seed", "pipeline/kernels/sampling.py", "a = splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF))",
             "a = splitmix64(np.uint64(0))", BALANCE_TESTS, "seed dropped from the hash"),
    Mutation("balance-hash-position", "pipeline/kernels/sampling.py", "u = uniforms(seed, np.repeat(uid_hashes(uids), per), values)",
             "u = uniforms(seed, np.repeat(np.arange(n, dtype=np.uint64), per), values)", BALANCE_TESTS,
             "hash of the row's position in its batch instead of its uid (partition-dependent)"),
    Mutation("balance-keep-all", "pipeline/kernels/sampling.py", "keep = np.bincount(text[u < pv], minlength=n) > 0",
             "keep = np.bincount(text[u < pv], minlength=n) == per", BALANCE_TESTS,
             "kept only when every matched entry draws u < p (instead of any)"),
    # --- SemDeDup (MISSION.md stage 9) -------------------------------------------------------
    Mutation("semdedup-boundary", "pipeline/kernels/semdedup.py", "nan=-np.inf) > 1.0 - eps", "nan=-np.inf) >= 1.0 - eps",
             PRUNE_TESTS, "similarity exactly 1 - eps counted as a duplicate"),
    Mutation("semdedup-tie", "pipeline/kernels/semdedup.py", "better = m > bj", "better = m >= bj", PRUNE_TESTS,
             "on a tie the later earlier-member wins"),
    Mutation("semdedup-order", "pipeline/kernels/semdedup.py", "np.lexsort((keys, -np.asarray(distance, np.float64)))",
             "np.lexsort((keys, np.asarray(distance, np.float64)))", PRUNE_TESTS, "nearest first instead of farthest"),
    Mutation("semdedup-uid-tie", "pipeline/kernels/semdedup.py", "return np.lexsort((keys, -np.asarray(distance, np.float64)))",
             'return np.argsort(-np.asarray(distance, np.float64), kind="stable")', PRUNE_TESTS,
             "distance ties kept in input order instead of by uid"),
    # --- density-based pruning (MISSION.md stage 9) -------------------------------------------
    Mutation("dbp-lower-bound", "pipeline/kernels/dbp.py", "np.minimum(floor, n - 1)", "np.minimum(floor, n)", PRUNE_TESTS,
             "lower bound min(floor, n) instead of n - 1"),
    Mutation("dbp-floor-ignored", "pipeline/kernels/dbp.py", "floor = int(np.floor(floor_ratio * keep_total / k))", "floor = 0",
             PRUNE_TESTS, "floor_ratio ignored"),
    Mutation("dbp-temperature", "pipeline/kernels/dbp.py", "softmax(complexity[live] / temperature)",
             "softmax(complexity[live] * temperature)", PRUNE_TESTS, "softmax(C * tau) instead of C / tau"),
    Mutation("dbp-inter-self", "pipeline/kernels/dbp.py", "dist[np.arange(r1 - r0), np.arange(r0, r1)] = np.inf",
             "dist = dist", PRUNE_TESTS, "d_inter counts a centroid as its own neighbour"),
    Mutation("dbp-rounding-tie", "pipeline/kernels/dbp.py", "pick = room[np.lexsort((idx[room], -frac[room]))][:remainder]",
             "pick = room[np.lexsort((-idx[room], -frac[room]))][:remainder]", PRUNE_TESTS,
             "rounding remainder to the higher cluster id on ties"),
    # --- the decisions ledger's accounting ----------------------------------------------------
    Mutation("ledger-stats-last", "pipeline/core/ledger.py", "for stage, c in counted.items():",
             "for stage, c in list(counted.items())[:-1]:", LEDGER_TESTS, "stats check skips the last stage"),
    Mutation("ledger-output-one-way", "pipeline/core/ledger.py",
             "if kept.exceptAll(output).count() or output.exceptAll(kept).count():", "if kept.exceptAll(output).count():",
             LEDGER_TESTS, "output check only: kept uids in the output"),
    Mutation("ledger-output-other-way", "pipeline/core/ledger.py",
             "if kept.exceptAll(output).count() or output.exceptAll(kept).count():", "if output.exceptAll(kept).count():",
             LEDGER_TESTS, "output check only: output uids kept"),
    Mutation("ledger-chain-lost", "pipeline/core/ledger.py", "if extra or lost:", "if extra:", LEDGER_TESTS,
             "chain check ignores uids a stage forgot"),
    Mutation("ledger-unique-inputs", "pipeline/core/ledger.py", "if inputs.distinct().count() != n_inputs:", "if False:",
             LEDGER_TESTS, "repeated input uids not noticed"),
    # --- clustering (MISSION.md stage 8) ------------------------------------------------------
    Mutation("cluster-sample-seed", "pipeline/stages/cluster.py", "key = F.xxhash64(F.lit(int(seed)), F.col(\"uid\"))",
             'key = F.xxhash64(F.col("uid"))', CLUSTER_TESTS, "k-means sample ignores the seed"),
    Mutation("cluster-sample-order", "pipeline/stages/cluster.py", 'table.sort_by([("_key", "ascending"), ("uid", "ascending")])',
             'table.sort_by([("_key", "descending"), ("uid", "ascending")])', CLUSTER_TESTS,
             "k-means sample takes the largest hashes"),
    Mutation("cluster-export-id", "pipeline/stages/cluster.py", "pa.array(ids[:, 0], pa.int32(), mask=invalid)",
             "pa.array(ids[:, -1], pa.int32(), mask=invalid)", CLUSTER_TESTS,
             "exported cluster_id is the last of the top-m, not the nearest"),
    Mutation("cluster-export-tie", "pipeline/kernels/kmeans.py", "order = np.lexsort((ids, dist), axis=1)[:, :m]",
             "order = np.lexsort((-ids, dist), axis=1)[:, :m]", CLUSTER_TESTS,
             "equidistant centroids: the higher id first"),
    # --- the URL guard's address classes ------------------------------------------------------
    Mutation("guard-ipv4-mapped", "pipeline/kernels/urlguard.py",
             "if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:", "if False:",
             GUARD_TESTS, "IPv4-mapped IPv6 addresses judged as IPv6"),
    Mutation("guard-metadata-ip", "pipeline/kernels/urlguard.py", '"169.254.169.254",  # AWS', "# removed", GUARD_TESTS,
             "169.254.169.254 not a cloud metadata address"),
    Mutation("guard-special-purpose", "pipeline/kernels/urlguard.py", "if not addr.is_global:", "if False:", GUARD_TESTS,
             "special-purpose (non-global) addresses such as 100.64/10 allowed"),
    Mutation("guard-6to4", "pipeline/kernels/urlguard.py", "inner = address_kind(addr.sixtofour) if addr.sixtofour is not None else None",
             "inner = None", GUARD_TESTS, "6to4 addresses not judged by their IPv4 address"),
    Mutation("guard-link-local", "pipeline/kernels/urlguard.py",
             '("loopback", "unspecified", "link_local", "multicast", "reserved", "private")',
             '("loopback", "unspecified", "multicast", "reserved", "private")', GUARD_TESTS,
             "link-local no longer its own class"),
    Mutation("prune-walk-runs", "pipeline/stages/prune.py",
             "starts = np.concatenate([[0], np.flatnonzero(cid[1:] != cid[:-1]) + 1])", "starts = np.array([0])",
             PRUNE_TESTS, "walking the clustered copy, a batch holding several clusters is deduplicated as one"),
    Mutation("cluster-zero-fast-path", "pipeline/kernels/kmeans.py",
             "ok = np.isfinite(whole).all(axis=1) & (whole != 0).any(axis=1)", "ok = np.isfinite(whole).all(axis=1)",
             CLUSTER_TESTS, "an all-zero embedding passes the whole-batch check"),
    # --- worldwide curation (MetaCLIP 2; README "Worldwide curation") ------------------------
    Mutation("world-pad-head", "pipeline/kernels/matcher.py", 'head = "" if is_cjk_or_similar(entry[0]) else " "',
             'head = "" if is_cjk_or_similar(entry[-1]) else " "', WORLD_TESTS,
             "an entry's leading space decided by its last character"),
    Mutation("world-pad-tail", "pipeline/kernels/matcher.py", 'tail = "" if is_cjk_or_similar(entry[-1]) else " "',
             'tail = " "', WORLD_TESTS, "entries ending in CJK-or-similar characters still need a space after them"),
    Mutation("world-tail-share", "pipeline/kernels/worldwide.py", "counts[counts < t].sum()", "counts[counts <= t].sum()",
             WORLD_TESTS, "the tail share counts entries whose count equals t"),
    Mutation("world-threshold-sort", "pipeline/kernels/worldwide.py", "c = np.sort(np.asarray(counts, np.int64))",
             "c = np.asarray(counts, np.int64)", WORLD_TESTS, "cumulative shares taken over unsorted counts"),
    Mutation("world-threshold-tie", "pipeline/kernels/worldwide.py", "int(np.argmin(np.abs(share - p)))",
             "int(len(share) - 1 - np.argmin(np.abs(share - p)[::-1]))", WORLD_TESTS,
             "a tie in |share - p| goes to the last count, not the first"),
    Mutation("world-own-t", "pipeline/kernels/worldwide.py", "t = t_by_language.get(lang)",
             "t = t_by_language.get(meta.languages[0])", WORLD_TESTS, "every language takes the first language's t"),
    Mutation("world-base-code", "pipeline/kernels/worldwide.py", 'base = code.strip().replace("_", "-").split("-")[0].lower()',
             "base = code.strip().lower()", WORLD_TESTS, "zh-Hans or pt_BR no longer fall back to zh or pt"),
)


def scratch_copy(dest: Path) -> None:
    """The working tree as git sees it (tracked and untracked, not ignored) copied to `dest`."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout
    for rel in filter(None, out.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def run_tests(copy: Path, tests: tuple[str, ...], timeout: int) -> tuple[str, str, float]:
    """('passed' | 'failed' | 'error', first failing test or note, seconds) for `tests` in `copy`."""
    files = [t for t in tests if (copy / t).exists()]
    env = {**os.environ, "PYTHONPATH": str(copy) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-rf", *files]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "error", f"timed out after {timeout}s", time.time() - t0
    seconds = time.time() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return "passed", "", seconds
    failed = re.search(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", out, re.M)
    if proc.returncode == 1 and failed:
        return "failed", failed.group(1), seconds
    tail = " | ".join(out.strip().splitlines()[-3:])
    return "error", f"pytest exit {proc.returncode}: {tail[:200]}", seconds


def check_imports_copy(copy: Path) -> None:
    """The scratch copy, not the installed checkout, is what `import pipeline` finds there."""
    env = {**os.environ, "PYTHONPATH": str(copy)}
    found = subprocess.run(
        [sys.executable, "-c", "import pipeline; print(pipeline.__file__)"],
        cwd=copy, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(copy.resolve()):
        sys.exit(f"mutate: the scratch copy imports pipeline from {found}, not from {copy}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[], help="run mutations whose name contains this (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the covering tests")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per pytest run (default 900)")
    args = ap.parse_args(argv)

    chosen = [m for m in MUTATIONS if not args.only or any(o in m.name for o in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.name:26s} {m.path:22s} {m.what}")
        return 0
    if not chosen:
        print(f"mutate: no mutation matches {args.only}", file=sys.stderr)
        return 2

    stale = [m for m in chosen if (ROOT / m.path).read_text().count(m.old) != 1]
    if stale:
        for m in stale:
            n = (ROOT / m.path).read_text().count(m.old)
            print(f"mutate: {m.name}: fragment found {n} times in {m.path} (must be once): {m.old!r}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="curate-mutate-") as tmp:
        copy = Path(tmp)
        scratch_copy(copy)
        check_imports_copy(copy)
        if not args.no_baseline:
            suites = sorted({m.tests for m in chosen})
            for tests in suites:
                status, note, seconds = run_tests(copy, tests, args.timeout)
                print(f"baseline {' '.join(tests)}: {status} {note} ({seconds:.0f}s)", flush=True)
                if status != "passed":
                    print("mutate: the unmutated tests do not pass; fix them first", file=sys.stderr)
                    return 2
        rows = []
        for m in chosen:
            target = copy / m.path
            original = target.read_text()
            target.write_text(original.replace(m.old, m.new))
            try:
                status, note, seconds = run_tests(copy, m.tests, args.timeout)
            finally:
                target.write_text(original)
            verdict = {"failed": "caught", "passed": "SURVIVED", "error": "error"}[status]
            rows.append((m, verdict, note, seconds))
            print(f"{m.name:26s} {verdict:8s} {note} ({seconds:.0f}s)", flush=True)

    width = max(len(m.name) for m, *_ in rows)
    print()
    print(f"| {'mutation':{width}s} | what | result | caught by |")
    print(f"|{'-' * (width + 2)}|---|---|---|")
    for m, verdict, note, _ in rows:
        print(f"| {m.name:{width}s} | {m.what} ({m.path}) | {verdict} | {note} |")
    survived = sum(v == "SURVIVED" for _, v, _, _ in rows)
    errors = sum(v == "error" for _, v, _, _ in rows)
    print(f"\n{len(rows) - survived - errors} of {len(rows)} caught, {survived} survived, {errors} errors")
    return 1 if survived or errors else 0


if __name__ == "__main__":
    sys.exit(main())
