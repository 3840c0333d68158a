"""The hostile pool through every stage, hostile embeddings through cluster and prune, and the
errors a person must be able to act on. The accounting invariant (pipeline.core.ledger.check_accounting)
holds at the end of each run: every input uid has exactly one terminal state, each stage decides
exactly what the one before kept, the kept uids are the final output, stats.json agrees with the
ledger."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests.pipeline_runs import ROOT, child_env

# The images are served on 127.0.0.2 and only that address is allowed: localhost, 127.0.0.1 in
# any spelling and ::1 must still be refused.
HOST = "127.0.0.2"
LINEAGE = ["ingest", "match", "balance", "download", "embed", "prune"]
# Where each hostile case ends: (stage, reason). "embedded" cases reach prune, where SemDeDup and
# DBP decide on random-weight embeddings (kept or dropped there, either is right).
EMBEDDED = ("prune", "*")
EXPECTED = {
    "null_caption": ("ingest", "empty_text"),
    "empty_caption": ("ingest", "empty_text"),
    "whitespace_caption": ("ingest", "empty_text"),
    "zero_width_only_caption": ("ingest", "empty_text"),
    "invalid_utf8_caption": ("ingest", "undecodable_text"),
    "lone_surrogate_caption": ("ingest", "malformed_row"),
    "megabyte_caption": ("ingest", "text_too_long"),
    "missing_uid_and_url": ("ingest", "no_url_or_image"),
    # MetaCLIP matches entries between spaces: "\u202edog", "\x07dog\x1b[31m" hold no " dog ".
    "punctuation_only_caption": ("match", "no_concept_match"),
    "rtl_caption": ("match", "no_concept_match"),
    "control_characters": ("match", "no_concept_match"),
    "zero_width_inside_word": EMBEDDED,  # "d\u200bog" is not "dog", but "photo" matches
    "cjk_caption": EMBEDDED,
    "duplicate_uid": EMBEDDED,  # the first; the second is ingest/duplicate_uid (below)
    "duplicate_url_text": EMBEDDED,  # the first of two rows with the same url and text
    "duplicate_url_text_repeat": ("ingest", "duplicate_url_text"),
    "image_truncated": ("download", "download_failed"),
    "image_zero_byte": ("download", "download_failed"),
    "image_not_an_image": ("download", "download_failed"),
    "image_bomb": ("download", "download_failed"),
    "http_404": ("download", "download_failed"),
    "image_cmyk": EMBEDDED,
    "image_sixteen_bit": EMBEDDED,
    "image_animated": EMBEDDED,
    "image_exif_rotated": EMBEDDED,
    "image_one_pixel": EMBEDDED,
    "good_image": EMBEDDED,
}
URL_CASES = (
    "ftp_scheme", "file_scheme", "javascript_scheme", "data_url", "credentials_in_url", "private_ip",
    "private_ip_192", "link_local_ip", "cloud_metadata", "metadata_hostname", "ipv6_loopback",
    "unspecified_address", "decimal_ip_loopback", "hostname_to_loopback",
)
EXPECTED.update({case: ("download", "url_refused") for case in URL_CASES})


def _terminal(run: Path, stages: list[str]) -> dict[str, dict]:
    """uid -> its ledger row from the latest of `stages` (read with pyarrow, not Spark)."""
    rows = ds.dataset(run / "decisions", format="parquet", partitioning="hive").to_table().to_pylist()
    out: dict[str, dict] = {}
    for r in rows:
        if r["stage"] in stages and (r["uid"] not in out or stages.index(r["stage"]) > stages.index(out[r["uid"]]["stage"])):
            out[r["uid"]] = r
    return out


def _config(tmp: Path, pool: str, stages: list[str]) -> Path:
    (tmp / "metadata.json").write_text(json.dumps(["dog", "photo"]))
    config = tmp / "hostile.yaml"
    config.write_text(
        f"""seed: 1
spark:
  shuffle_partitions: 3
run:
  input: {pool}
  output: {tmp / "run"}
  stages: {json.dumps(stages)}
match:
  metadata: {tmp / "metadata.json"}
balance:
  t: 1000
download:
  image_size: 32
  processes: 1
  threads: 4
  timeout: 5
  allow_hosts: ["{HOST}"]
embed:
  model: tiny-clip
  batch_size: 8
  workers: 1
  device: cpu
cluster:
  k: 3
  niter: 5
prune:
  dedup_eps: 0.0001
  keep_fraction: 0.8
  inter_k: 2
"""
    )
    return config


@pytest.fixture
def no_folder_renames(monkeypatch):
    """Folder renames fail in the project's filesystem layer (and in os/shutil), as they would be
    refused by a store where a rename copies every object: a stage must write in place."""
    import os
    import shutil

    from pipeline.core.fs import RunFS

    refused: list[str] = []

    class NoFolderRenames:
        def __init__(self, fs):
            self._fs = fs

        def rename(self, src, dst):
            if self._fs.isDirectory(src):
                refused.append(str(src.toString()))
                raise OSError(f"folder rename refused: {src.toString()}")
            return self._fs.rename(src, dst)

        def __getattr__(self, name):
            return getattr(self._fs, name)

    real_fs = RunFS._fs
    monkeypatch.setattr(RunFS, "_fs", lambda self, path: NoFolderRenames(real_fs(self, path)))

    def guard(real):
        def call(src, dst, *args, **kwargs):
            if os.path.isdir(src):
                refused.append(str(src))
                raise OSError(f"folder rename refused: {src}")
            return real(src, dst, *args, **kwargs)
        return call

    for owner, name in ((os, "rename"), (os, "replace"), (shutil, "move")):
        monkeypatch.setattr(owner, name, guard(getattr(owner, name)))
    return refused


def test_hostile_pool_through_every_stage(spark, tmp_path, capfd, no_folder_renames):
    """Every stage, with folder renames made to fail: outputs are written where they stay."""
    from pipeline.cli import main
    from pipeline.core.ledger import check_accounting
    from pipeline.localserve import serve_folder
    from pipeline.testing.hostile import write_hostile_pool

    images = tmp_path / "images"
    images.mkdir()
    stages = ["ingest", "match", "count", "balance", "download", "embed", "cluster", "prune", "report"]
    with serve_folder(str(images), host=HOST) as server:
        pool = write_hostile_pool(str(tmp_path), server.url(""), seed=0)
        config = _config(tmp_path, pool.path, stages)
        rc = main(["run", "--config", str(config), "--master", "local[2]"])
        requested = dict(server.requests)
    err = capfd.readouterr().err
    assert rc == 0 and "Traceback" not in err, err[-3000:]
    assert no_folder_renames == []
    run = tmp_path / "run"
    assert sorted(p.parent.name for p in run.glob("*/_COMPLETE")) == sorted(s if s != "report" else "reports" for s in stages)
    assert (run / "reports" / "report.html").exists()

    # The invariant, over the stages the final rows came through; every line of the pool is an input.
    lines = Path(pool.path).read_bytes().count(b"\n")
    accounting = check_accounting(spark, str(run), LINEAGE)
    assert accounting["inputs"] == lines == 44

    # Each case ends where it should. Rows the ingest renamed: the second t-dupuid, and the
    # lone-surrogate line (unparseable, so keyed by a hash of the line; Java's reader would have
    # turned the surrogate into "?").
    terminal = _terminal(run, ["ingest", "match", "balance", "download", "embed", "cluster", "prune"])
    cases = json.loads((tmp_path / "cases.json").read_text())
    assert set(cases.values()) == set(EXPECTED)
    extra = {uid: (r["stage"], r["reason"], r["detail"]) for uid, r in terminal.items() if uid not in cases}
    assert extra.pop("t-dupuid#dup2") == ("ingest", "duplicate_uid", "duplicate of uid t-dupuid")
    [(malformed, (_, _, detail))] = extra.items()
    assert malformed.startswith("malformed-") and '"uid": "t-surrogate"' in detail
    renamed = {"t-surrogate": malformed}
    for uid, case in cases.items():
        row = terminal[renamed.get(uid, uid)]
        stage, reason = EXPECTED[case]
        got = (row["stage"], row["reason"] if reason != "*" else "*")
        assert got == (stage, reason), f"{uid} ({case}): {row}"

    # The URL guard refused before any packet: one request per allowed image URL, none for the rest.
    embedded = {uid for uid, case in cases.items() if EXPECTED[case] == EMBEDDED}
    failed = {uid for uid, case in cases.items() if EXPECTED[case] == ("download", "download_failed")}
    assert sum(requested.values()) == len(requested) == len(embedded | failed), requested
    # The EXIF-rotated 24x40 JPEG (orientation 6) is stored upright: 40 wide, 24 high.
    data = {r["uid"]: r for r in ds.dataset(run / "download" / "data", format="parquet").to_table().to_pylist()}
    assert (data["i-exif_rotated"]["original_width"], data["i-exif_rotated"]["original_height"]) == (40, 24)
    assert set(data) == embedded
    embed_ledger = {r["uid"]: r for r in ds.dataset(run / "decisions" / "stage=embed", format="parquet").to_table().to_pylist()}
    assert {u for u, r in embed_ledger.items() if r["decision"] == "kept"} == embedded


def test_hostile_embeddings_nan_inf_zero_and_one_member_clusters(spark, tmp_path, capfd):
    """Precomputed embeddings with NaN, inf and zero rows, and every valid point its own cluster
    (k = the number of valid points): embed drops the bad rows, cluster and prune run on clusters
    of one member, and the accounting holds."""
    from pipeline.cli import main
    from pipeline.core.ledger import check_accounting

    rng = np.random.default_rng(5)
    valid = 8
    x = rng.normal(size=(valid + 4, 16)).astype(np.float32)
    x[valid] = np.nan
    x[valid + 1, 3] = np.inf
    x[valid + 2] = 0.0
    x[valid + 3, :] = x[0]  # a valid exact duplicate of row 0: 9 valid rows, 8 distinct points
    uids = [f"e{i:02d}" for i in range(len(x))]
    np.save(tmp_path / "x.npy", x)
    pq.write_table(pa.table({"uid": uids}), tmp_path / "uids.parquet")
    run = str(tmp_path / "run")
    assert main(["embed", "--npy", str(tmp_path / "x.npy"), "--uids", str(tmp_path / "uids.parquet"), "--output", run]) == 0
    assert main(["cluster", "--input", run, "--output", run, "--k", str(valid), "--niter", "3", "--seed", "1"]) == 0
    assert main(["prune", "--input", run, "--output", run, "--dedup-eps", "0.01", "--keep-fraction", "0.5",
                 "--inter-k", "2", "--max-per-cluster", "1"]) == 0
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    accounting = check_accounting(spark, run, ["embed", "cluster", "prune"], first_stage="embed")
    assert accounting["inputs"] == len(x)
    terminal = _terminal(Path(run), ["embed", "cluster", "prune"])
    assert {u for u, r in terminal.items() if (r["stage"], r["reason"]) == ("embed", "invalid_embedding")} == {
        "e08", "e09", "e10"
    }
    clusters = pq.read_table(Path(run) / "cluster" / "data").to_pandas()
    sizes = clusters.groupby("cluster_id").size()
    assert len(sizes) == valid and sorted(sizes)[:valid - 1] == [1] * (valid - 1)  # e00 and e11 share one
    assert terminal["e11"]["reason"] == "semantic_duplicate" or terminal["e00"]["reason"] == "semantic_duplicate"
    stats = pq.read_table(Path(run) / "prune" / "cluster_stats.parquet").to_pandas()
    numeric = stats.select_dtypes("number")
    assert np.isfinite(numeric.to_numpy(dtype=float)).all(), stats


# --------------------------------------------------------------------------- errors a person can act on


def _curate(args: list[str], env: dict | None = None, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, env=env or child_env(), capture_output=True,
        text=True, preexec_fn=preexec, timeout=300,
    )


def _one_line(err: str, command: str) -> str:
    """The error line curate printed; Spark's own log lines may precede it, a traceback may not."""
    assert "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"curate {command}: error: "), err[-3000:]
    return line


def test_missing_java_is_one_line(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"url": "http://a/1.jpg", "text": "a dog"}\n')
    env = {k: v for k, v in child_env().items() if k != "JAVA_HOME"}
    env["PATH"] = str(Path(sys.executable).parent)  # the venv, no java
    p = _curate(["ingest", "--input", str(pool), "--output", str(tmp_path / "run")], env=env)
    assert p.returncode == 2
    assert "Java not found" in _one_line(p.stderr, "ingest") and "openjdk-17-jre-headless" in p.stderr
    assert not (tmp_path / "run" / "ingest" / "_COMPLETE").exists()


def test_full_disk_is_one_line_and_nothing_is_marked_complete(tmp_path):
    """A file size limit (RLIMIT_FSIZE) stands in for a full disk: writes fail with EFBIG in Python
    and in Spark's JVM alike (Python starts with SIGXFSZ ignored, and children inherit that)."""
    rng = np.random.default_rng(0)
    with open(tmp_path / "pool.jsonl", "w") as fh:
        for i in range(20_000):
            words = " ".join(f"w{v}" for v in rng.integers(0, 10**6, size=12))
            fh.write(json.dumps({"uid": f"u{i}", "url": f"http://example.com/{i}.jpg", "text": f"dog {words}"}) + "\n")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    run = tmp_path / "run"
    p = _curate(["ingest", "--input", str(tmp_path / "pool.jsonl"), "--output", str(run), "--master", "local[1]"],
                preexec=limit)
    assert p.returncode == 2, p.stderr[-3000:]
    line = _one_line(p.stderr, "ingest")
    assert "no room to write (File too large)" in line and "--output" in line
    assert not list(run.glob("*/_COMPLETE"))


def test_cli_errors_name_the_problem(spark, tmp_path, capsys):
    """Bad config, missing columns, missing WordNet, a GPU demanded where there is none: exit 2, one line."""
    import torch

    from pipeline.cli import main

    def error(args: list[str], command: str) -> str:
        assert main(args) == 2
        return _one_line(capsys.readouterr().err, command)

    bad = tmp_path / "bad.yaml"
    bad.write_text("prune:\n  dedup_epss: 0.1\n")
    assert "dedup_epss" in error(["run", "--config", str(bad), "--output", str(tmp_path / "r0")], "run")

    pq.write_table(pa.table({"alt": ["a dog"], "link": ["http://a/1.jpg"]}), tmp_path / "cols.parquet")
    line = error(["ingest", "--input", str(tmp_path / "cols.parquet"), "--output", str(tmp_path / "r1"),
                  "--text-col", "caption"], "ingest")
    assert "caption" in line
    assert not (tmp_path / "r1" / "ingest" / "_COMPLETE").exists()

    line = error(["metadata", "build", "--wordnet", "--wordnet-dir", str(tmp_path / "nope"), "--output",
                  str(tmp_path / "m.json")], "metadata")
    assert "WordNet folder not found" in line and "apt-get install wordnet-base" in line
    assert not (tmp_path / "m.json").exists()

    if not torch.cuda.is_available():
        (tmp_path / "imgs").mkdir()
        from PIL import Image

        Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
        line = error(["embed", "--input", str(tmp_path / "imgs"), "--output", str(tmp_path / "r2"), "--model",
                      "tiny-clip", "--device", "cuda"], "embed")
        assert "CUDA is not available" in line and "--device cpu" in line
        assert not (tmp_path / "r2" / "embed" / "_COMPLETE").exists()


def test_webdataset_member_names_cannot_write_outside_the_run(spark, tmp_path):
    """Tar members named ../, absolute or a/../../ are keys (strings), never paths written to."""
    import io

    from PIL import Image

    from pipeline.cli import main

    shards = tmp_path / "shards"
    shards.mkdir()
    names = ["../../escape_a", "/tmp/escape_b", "ok/../../../escape_c", "plain"]
    with tarfile.open(shards / "00000.tar", "w") as tar:
        for i, name in enumerate(names):
            buf = io.BytesIO()
            Image.new("RGB", (12, 12), (i * 40, 10, 10)).save(buf, format="JPEG")
            for ext, data in (("jpg", buf.getvalue()), ("txt", f"a dog {i}".encode())):
                info = tarfile.TarInfo(f"{name}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    before = {p for p in tmp_path.parent.rglob("*")}
    run = tmp_path / "run"
    assert main(["embed", "--input", str(shards), "--output", str(run), "--model", "tiny-clip", "--device", "cpu",
                 "--workers", "0"]) == 0
    assert main(["ingest", "--input", str(shards), "--output", str(tmp_path / "run2"), "--format", "webdataset"]) == 0
    created = {p for p in tmp_path.parent.rglob("*")} - before
    assert all(p.is_relative_to(run) or p.is_relative_to(tmp_path / "run2") for p in created), sorted(created)
    assert not any(Path(p).exists() for p in ("/tmp/escape_b.jpg", str(tmp_path.parent / "escape_a.jpg")))
    embedded = pq.read_table(run / "embed" / "data").to_pandas()
    assert len(embedded) == len(names)


def test_exif_rotated_images_are_embedded_upright():
    """A photo stored on its side with EXIF orientation 6 gives the pixels of the upright image."""
    import io

    from PIL import Image

    from pipeline.kernels.imageio import PreprocessSpec, load_image

    stored = np.zeros((40, 24, 3), dtype=np.uint8)
    stored[:20] = (250, 250, 250)  # top half white as stored: the right half once upright
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated, upright = io.BytesIO(), io.BytesIO()
    Image.fromarray(stored).save(rotated, format="PNG", exif=exif.tobytes())
    Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270).save(upright, format="PNG")
    spec = PreprocessSpec(size=16)
    got, want = load_image(rotated.getvalue(), spec), load_image(upright.getvalue(), spec)
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 2
    assert got[:, -1].mean() > 200 and got[:, 0].mean() < 50
