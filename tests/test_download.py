"""Download stage: real img2dataset against a real HTTP server on 127.0.0.1, and the URL guard."""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import shutil
import struct
import time
import urllib.error
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.core import reasons as R
from pipeline.kernels.urlguard import GuardPolicy, URLRefused, build_opener, check_hosts
from pipeline.localserve import serve_folder
from pipeline.registry import PipelineConfig
from pipeline.stages.download import DownloadConfig
from tests.pipeline_runs import tar_samples

pytest.importorskip("img2dataset")

SIZES = [(40, 30), (64, 64), (100, 50), (30, 90), (200, 120), (17, 23)]
IMAGE_SIZE = 32
SLOW_SECONDS = 3.0
TIMEOUT = 1.0


def jpeg(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_claiming(w: int, h: int) -> bytes:
    """A PNG whose header says w x h but whose data holds four rows: a decompression-bomb stand-in."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = zlib.compress(b"\x00" + b"\x00" * 3 * w) * 1
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


class Site:
    """A folder of test files and the routes that misbehave on purpose; `expected` is the oracle."""

    def __init__(self, root):
        self.root = root
        self.good: dict[str, tuple[int, int]] = {}
        for i, (w, h) in enumerate(SIZES):
            (root / f"ok_{i}.jpg").write_bytes(jpeg(w, h, i))
            self.good[f"/ok_{i}.jpg"] = (w, h)
        whole = jpeg(80, 60, 99)
        (root / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
        (root / "empty.jpg").write_bytes(b"")
        (root / "page.html").write_text("<html><body>not an image</body></html>")
        (root / "huge.png").write_bytes(png_claiming(30000, 30000))
        self.flaky_body = jpeg(48, 36, 7)
        self.slow_body = jpeg(20, 20, 8)

    def routes(self, port_box: list[int]):
        def slow(h):
            time.sleep(SLOW_SECONDS)
            _send(h, 200, self.slow_body, "image/jpeg")

        def flaky(h):
            # Fails the first time it is asked, succeeds afterwards.
            if h.server_state.requests[h.path] == 1:
                _send(h, 503, b"try later", "text/plain")
            else:
                _send(h, 200, self.flaky_body, "image/jpeg")

        def redirect(target):
            def go(h):
                h.send_response(302)
                h.send_header("Location", target() if callable(target) else target)
                h.send_header("Content-Length", "0")
                h.end_headers()

            return go

        return {
            "/slow.jpg": slow,
            "/flaky.jpg": flaky,
            "/to-metadata.jpg": redirect("http://169.254.169.254/latest/meta-data/"),
            "/to-ipv6-loopback.jpg": redirect(lambda: f"http://[::1]:{port_box[0]}/ok_0.jpg"),
            "/to-file.jpg": redirect("file:///etc/passwd"),
            "/to-ok.jpg": redirect("/ok_1.jpg"),
        }


def _send(h, code: int, body: bytes, ctype: str) -> None:
    h.send_response(code)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    site = Site(root)
    box = [0]
    with serve_folder(str(root), routes=site.routes(box)) as srv:
        box[0] = srv.port
        srv.site = site
        yield srv


def pool_rows(srv) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """uid -> url, and uid -> (expected reason or 'kept', a fragment of the expected detail)."""
    u = srv.url
    expected: dict[str, tuple[str, str]] = {}
    urls: dict[str, str] = {}

    def add(uid, url, outcome, fragment=""):
        urls[uid], expected[uid] = url, (outcome, fragment)

    for i in range(len(SIZES)):
        add(f"ok{i}", u(f"ok_{i}.jpg"), R.KEPT)
    add("redirect_ok", u("to-ok.jpg"), R.KEPT)
    add("missing", u("missing.jpg"), R.DOWNLOAD_FAILED, "404")
    add("truncated", u("truncated.jpg"), R.DOWNLOAD_FAILED, "decoding")
    add("empty", u("empty.jpg"), R.DOWNLOAD_FAILED, "empty response")
    add("html", u("page.html"), R.DOWNLOAD_FAILED, "decoding")
    add("huge", u("huge.png"), R.DOWNLOAD_FAILED, "refused before decoding")
    add("slow", u("slow.jpg"), R.DOWNLOAD_FAILED, "timed out")
    add("flaky", u("flaky.jpg"), R.DOWNLOAD_FAILED, "503")
    add("redir_meta", u("to-metadata.jpg"), R.URL_REFUSED, "cloud metadata")
    add("redir_v6", u("to-ipv6-loopback.jpg"), R.URL_REFUSED, "loopback")
    add("redir_file", u("to-file.jpg"), R.URL_REFUSED, "scheme 'file'")
    add("file", "file:///etc/passwd", R.URL_REFUSED, "scheme 'file'")
    add("ftp", f"ftp://127.0.0.1:{srv.port}/ok_0.jpg", R.URL_REFUSED, "scheme 'ftp'")
    add("private", "http://10.1.2.3/x.jpg", R.URL_REFUSED, "private")
    add("metadata", "http://169.254.169.254/latest/meta-data/", R.URL_REFUSED, "cloud metadata")
    add("v6loop", f"http://[::1]:{srv.port}/ok_0.jpg", R.URL_REFUSED, "loopback")
    add("creds", f"http://user:pw@127.0.0.1:{srv.port}/ok_0.jpg", R.URL_REFUSED, "credentials")
    add("nourl", "", R.URL_REFUSED, "no URL")
    return urls, expected


def write_pool(path, urls: dict[str, str]) -> str:
    uids = sorted(urls)
    pq.write_table(
        pa.table({"uid": uids, "url": [urls[x] for x in uids], "text": [f"caption of {x}" for x in uids], "lang": ["en"] * len(uids)}),
        path,
    )
    return str(path)


def config(**download) -> PipelineConfig:
    base = dict(
        image_size=IMAGE_SIZE, processes=1, threads=8, timeout=TIMEOUT, samples_per_shard=8,
        allow_hosts=("127.0.0.1",), distributor="multiprocessing",
    )
    base.update(download)
    return PipelineConfig(download=DownloadConfig(**base))


def ledger(spark, run) -> dict[str, tuple[str, str, str | None]]:
    rows = spark.read.parquet(f"{run}/decisions/stage=download").collect()
    out = {r["uid"]: (r["decision"], r["reason"], r["detail"]) for r in rows}
    assert len(out) == len(rows), "a uid has more than one ledger row"
    return out


def check_outcomes(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for uid, (outcome, fragment) in expected.items():
        decision, reason, detail = got[uid]
        if outcome == R.KEPT:
            assert (decision, reason, detail) == ("kept", None, None), (uid, got[uid])
        else:
            assert (decision, reason) == ("dropped", outcome), (uid, got[uid])
            assert detail and fragment in detail, (uid, detail)


def tar_images(shards_dir) -> dict[str, tuple[dict, tuple[int, int], str]]:
    """uid -> (sample json, decoded image size, tar file name), read from the tars with tarfile + PIL."""
    out = {}
    for tar_name, key, files in tar_samples(shards_dir):
        meta = json.loads(files["json"])
        assert meta["key"] == key
        out[meta["uid"]] = (meta, Image.open(io.BytesIO(files["jpg"])).size, tar_name)
    return out


# --------------------------------------------------------------------------- the guard alone


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("file:///etc/passwd", "scheme 'file'"),
        ("ftp://example.com/a.jpg", "scheme 'ftp'"),
        ("gopher://example.com/", "scheme 'gopher'"),
        ("data:image/png;base64,AAAA", "scheme 'data'"),
        ("//example.com/a.jpg", "scheme (none)"),
        ("http://10.0.0.1/a.jpg", "private"),
        ("http://192.168.1.1/a.jpg", "private"),
        ("http://172.16.5.4/a.jpg", "private"),
        ("http://127.0.0.1/a.jpg", "loopback"),
        ("http://2130706433/a.jpg", "loopback"),  # 127.0.0.1 as one decimal number
        ("http://localhost/a.jpg", "loopback"),
        ("http://[::1]/a.jpg", "loopback"),
        ("http://[::ffff:10.0.0.1]/a.jpg", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[fd00:ec2::254]/latest/", "cloud metadata"),
        ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata"),
        ("http://169.254.10.10/a.jpg", "link-local"),
        ("http://[fe80::1]/a.jpg", "link-local"),
        ("http://224.0.0.1/a.jpg", "multicast"),
        ("http://0.0.0.0/a.jpg", "unspecified"),
        ("http://240.0.0.1/a.jpg", "reserved"),
        ("http://100.64.0.1/a.jpg", "non-public"),
        ("http://user:secret@8.8.8.8/a.jpg", "credentials"),
        ("http://images.example@10.0.0.1/a.jpg", "credentials"),
        ("http://[::1/a.jpg", "unparseable"),
        ("http:///a.jpg", "no host"),
        ("", "no URL"),
        (None, "no URL"),
    ],
)
def test_guard_refuses(url, fragment):
    why = GuardPolicy().check_url(url)
    assert why is not None and fragment in why, why


def test_guard_allows_public_addresses_and_explicit_exceptions():
    policy = GuardPolicy()
    for url in ("http://8.8.8.8/a.jpg", "https://1.1.1.1:8443/x?y=1", "HTTP://[2606:4700:4700::1111]/a.png"):
        assert policy.check_url(url) is None, url
    assert GuardPolicy(allow=("127.0.0.1",)).check_url("http://127.0.0.1:9/a.jpg") is None
    assert GuardPolicy(allow=("127.0.0.1",)).check_url("http://[::1]:9/a.jpg") is not None
    assert GuardPolicy(allow=("10.0.0.0/8",)).check_url("http://10.9.8.7/a.jpg") is None
    assert GuardPolicy(allow=("10.0.0.0/8",)).check_url("http://192.168.0.1/a.jpg") is not None
    assert GuardPolicy(allow_private=True).check_url("http://192.168.0.1/a.jpg") is None
    # Switching the address checks off keeps scheme, credential and metadata refusals.
    assert GuardPolicy(allow_private=True).check_url("file:///etc/passwd") is not None
    assert GuardPolicy(allow_private=True).check_url("http://169.254.169.254/") is not None
    with pytest.raises(ValueError):
        GuardPolicy(allow=("not a host/",))


def test_check_hosts_matches_check_url():
    urls = ["http://8.8.8.8/a", "http://10.0.0.1/b", "ftp://x/c", "http://8.8.8.8/d", "http://[::1]/e", None]
    policy = GuardPolicy()
    assert check_hosts(urls, policy, threads=3) == [policy.check_url(u) for u in urls]


def test_opener_checks_redirects_and_connections_before_any_request(tmp_path):
    """A redirect from an allowed server to one the policy refuses never reaches the second server."""
    (tmp_path / "a.txt").write_text("secret")
    with serve_folder(str(tmp_path), host="127.0.0.2") as inner:
        routes = {"/hop": lambda h: (h.send_response(302), h.send_header("Location", inner.url("a.txt")), h.end_headers())}
        with serve_folder(str(tmp_path), routes=routes) as outer:
            strict = build_opener(GuardPolicy(allow=("127.0.0.1",)))
            with pytest.raises(URLRefused, match="redirect to .*127.0.0.2.*loopback"):
                strict.open(outer.url("hop"), timeout=5)
            with pytest.raises(URLRefused, match="loopback"):
                strict.open(inner.url("a.txt"), timeout=5)
            assert outer.requests["/hop"] == 1 and sum(inner.requests.values()) == 0
            with pytest.raises(urllib.error.URLError, match="unknown url type"):
                strict.open("file:///etc/passwd")
            # The same hop with 127.0.0.0/8 allowed goes through: the refusal above was the guard's.
            wide = build_opener(GuardPolicy(allow=("127.0.0.0/8",)))
            assert wide.open(outer.url("hop"), timeout=5).read() == b"secret"
            assert inner.requests["/a.txt"] == 1


# --------------------------------------------------------------------------- the stage's parts


def test_input_is_the_most_curated_complete_text_stage(spark, tmp_path):
    from pipeline.core.folder import RunFolder
    from pipeline.core.protocol import InputError, resolve
    from pipeline.stages.download import STAGE

    run, slot = RunFolder(spark, str(tmp_path)), STAGE.inputs[0]

    def source(path) -> str:
        return resolve(run, slot, str(path)).path

    for stage in ("ingest", "match", "balance", "embed"):
        (tmp_path / stage / "data").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no complete stage among balance, match, ingest"):
        source(tmp_path)  # started, none finished
    (tmp_path / "ingest" / "_COMPLETE").write_text('{"stage": "ingest"}')
    assert source(tmp_path) == f"{tmp_path}/ingest/data"  # the first complete one, nearest first
    (tmp_path / "match" / "_COMPLETE").write_text('{"stage": "match"}')
    assert source(tmp_path) == f"{tmp_path}/match/data"
    (tmp_path / "balance" / "_COMPLETE").write_text('{"stage": "balance"}')
    assert source(tmp_path) == f"{tmp_path}/balance/data"
    assert source(tmp_path / "match") == f"{tmp_path}/match/data"
    (tmp_path / "embed" / "_COMPLETE").write_text('{"stage": "embed"}')
    with pytest.raises(InputError, match="the output of the embed stage, not of balance or match or ingest"):
        source(tmp_path / "embed")
    with pytest.raises(FileNotFoundError, match="input not found"):
        source(tmp_path / "nowhere")


def test_a_uid_img2dataset_never_reports_is_a_failure_not_a_loss(spark):
    from pipeline.kernels.urlguard import REFUSED_PREFIX
    from pipeline.stages.download import NEVER_REPORTED, with_download_decisions

    todo = spark.createDataFrame([(u, f"http://x/{u}", "t") for u in "abcde"], "uid string, url string, text string")
    refusals = spark.createDataFrame([("a", "scheme 'ftp' is not http or https"), ("b", None), ("c", None), ("d", None), ("e", None)], "uid string, _refusal string")
    cols = "uid string, shard string, key string, status string, error_message string, width int, height int, original_width int, original_height int, sha256 string"
    results = spark.createDataFrame(
        [
            ("b", "00000.tar", "000000000", "success", None, 8, 8, 8, 8, "f" * 64),
            ("c", "00000.tar", "000000001", "failed_to_download", "HTTP Error 404: Not Found", None, None, None, None, None),
            ("d", "00000.tar", "000000002", "failed_to_download", f"{REFUSED_PREFIX}redirect to http://10.0.0.1/: private", None, None, None, None, None),
        ],
        cols,
    )
    got = {r["uid"]: (r["_reason"], r["_detail"]) for r in with_download_decisions(todo, refusals, results).collect()}
    assert got == {
        "a": (R.URL_REFUSED, "scheme 'ftp' is not http or https"),
        "b": (None, None),
        "c": (R.DOWNLOAD_FAILED, "HTTP Error 404: Not Found"),
        "d": (R.URL_REFUSED, "redirect to http://10.0.0.1/: private"),
        "e": (R.DOWNLOAD_FAILED, NEVER_REPORTED),
    }


def test_unfinished_shards_are_removed(spark, tmp_path):
    from pipeline.core.folder import RunFolder as Run
    from pipeline.stages.download import _complete_shards

    for name in ("00000.tar", "00000.parquet", "00001.tar", "00001.parquet", "00002.tar"):
        (tmp_path / name).write_bytes(b"x" * 10)
    stats = {"count": 3, "successes": 2, "failed_to_download": 1, "failed_to_resize": 0, "status_dict": {"success": 2, "timed out": 1}}
    (tmp_path / "00000_stats.json").write_text(json.dumps(stats))
    (tmp_path / "00001_stats.json").write_text(json.dumps(stats))
    complete, totals = _complete_shards(Run(spark, str(tmp_path)), str(tmp_path))
    assert sorted(complete) == [0, 1] and not (tmp_path / "00002.tar").exists()
    assert totals["successes"] == 4 and totals["count"] == 6 and totals["top_errors"] == {"timed out": 2}
    assert totals["bytes_written"] == 4 * 10 + 2 * len(json.dumps(stats))


# --------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def first_run(spark, server, tmp_path_factory):
    from pipeline.api import run_download

    tmp = tmp_path_factory.mktemp("download")
    urls, expected = pool_rows(server)
    pool = write_pool(tmp / "pool.parquet", urls)
    run = str(tmp / "run")
    result = run_download(spark, pool, run, config())
    counts = dict(server.requests)
    return {"pool": pool, "run": run, "result": result, "expected": expected, "urls": urls, "counts": counts}


def test_every_uid_has_its_outcome(spark, first_run):
    check_outcomes(ledger(spark, first_run["run"]), first_run["expected"])
    stats = first_run["result"].stats
    n_kept = sum(1 for o, _ in first_run["expected"].values() if o == R.KEPT)
    assert stats["rows_in"] == len(first_run["expected"]) and stats["kept"] == n_kept
    # img2dataset's own counters: what the guard let through was all handed to it.
    refused_early = sum(1 for uid, (o, _) in first_run["expected"].items() if o == R.URL_REFUSED and not uid.startswith("redir"))
    i2d = stats["img2dataset"]
    assert i2d["count"] == len(first_run["expected"]) - refused_early
    assert i2d["successes"] == n_kept and i2d["bytes_written"] > 0


def test_refused_urls_were_never_requested(server, first_run):
    counts = first_run["counts"]
    # Refused before any request: ftp, [::1] and credential URLs point at this very server.
    assert counts.get("/ok_0.jpg", 0) == 1
    # Redirects were requested once; their refused targets never were.
    for path in ("/to-metadata.jpg", "/to-ipv6-loopback.jpg", "/to-file.jpg"):
        assert counts[path] == 1


def test_downloaded_images_match_their_sources(spark, server, first_run):
    run = first_run["run"]
    data = {r["uid"]: r for r in spark.read.parquet(f"{run}/download/data").collect()}
    kept = {u for u, (o, _) in first_run["expected"].items() if o == R.KEPT}
    assert set(data) == kept
    in_tars = tar_images(f"{run}/download/shards")
    assert set(in_tars) == kept
    good = server.site.good
    for uid, row in data.items():
        path = "/ok_1.jpg" if uid == "redirect_ok" else first_run["urls"][uid].split(str(server.port), 1)[1]
        ow, oh = good[path]
        assert (row["original_width"], row["original_height"]) == (ow, oh), uid
        meta, size, tar_name = in_tars[uid]
        assert size == (row["width"], row["height"]) and row["shard"] == tar_name and row["key"] == meta["key"]
        # keep_ratio: the short side becomes image_size and the aspect ratio is kept.
        assert min(size) == IMAGE_SIZE
        assert abs(size[0] / size[1] - ow / oh) < 2.0 / IMAGE_SIZE * max(ow / oh, 1)
        assert row["text"] == f"caption of {uid}" and row["lang"] == "en" and len(row["sha256"]) == 64


def test_contract_of_the_output(spark, first_run):
    from tests.test_schemas import assert_matches_contract

    df = spark.read.parquet(f"{first_run['run']}/download/data")
    assert_matches_contract(df, "download")
    assert "lang" in df.columns  # the input's other columns pass through


def test_rerun_of_a_complete_stage_is_skipped(spark, server, first_run):
    from pipeline.api import run_download

    before = dict(server.requests)
    result = run_download(spark, first_run["pool"], first_run["run"], config())
    assert result.skipped and dict(server.requests) == before


def test_retry_failed_through_the_cli_fetches_only_what_failed(spark, server, first_run, tmp_path):
    from pipeline.cli import main

    run = str(tmp_path / "run")
    shutil.copytree(first_run["run"], run)
    old_shards = sorted(p.rsplit("/", 1)[1] for p in glob.glob(f"{run}/download/shards/*"))
    old_data = {r["uid"]: r.asDict() for r in spark.read.parquet(f"{run}/download/data").collect()}
    before = dict(server.requests)
    code = main([
        "download", "--input", first_run["pool"], "--output", run, "--retry-failed", "--allow-host", "127.0.0.1",
        "--image-size", str(IMAGE_SIZE), "--processes", "1", "--threads", "8", "--timeout", str(TIMEOUT),
        "--distributor", "multiprocessing",
    ])
    assert code == 0
    after = dict(server.requests)
    asked = {p: after.get(p, 0) - before.get(p, 0) for p in set(after) | set(before)}
    urls, expected = first_run["urls"], first_run["expected"]
    failed_paths = {urls[u].split(str(server.port), 1)[1] for u, (o, _) in expected.items() if o == R.DOWNLOAD_FAILED}
    assert {p for p, n in asked.items() if n} == failed_paths
    assert all(asked[p] == 1 for p in failed_paths)

    # flaky now succeeds; everything else keeps its earlier outcome.
    check_outcomes(ledger(spark, run), dict(expected, flaky=(R.KEPT, "")))
    data = {r["uid"]: r.asDict() for r in spark.read.parquet(f"{run}/download/data").collect()}
    assert set(data) == set(old_data) | {"flaky"}
    for uid, row in old_data.items():
        assert data[uid] == row
    new_shards = sorted(p.rsplit("/", 1)[1] for p in glob.glob(f"{run}/download/shards/*"))
    assert set(old_shards) < set(new_shards)
    assert data["flaky"]["shard"] not in old_shards and data["flaky"]["shard"] in new_shards
    assert (data["flaky"]["original_width"], data["flaky"]["original_height"]) == (48, 36)
    assert set(tar_images(f"{run}/download/shards")) == set(data)
    stats = json.loads(open(f"{run}/download/stats.json").read())
    assert stats["kept"] == len(data) and stats["rows_in"] == len(expected)
    assert [a["kind"] for a in stats["attempts"]] == ["full", "retry_failed"]
    assert stats["attempts"][1]["uids"] == len(failed_paths)


@pytest.mark.slow
def test_pyspark_distributor_and_parquet_shards(spark, server, tmp_path):
    from pipeline.api import run_download

    urls = {f"ok{i}": server.url(f"ok_{i}.jpg") for i in range(3)} | {"missing": server.url("nope.jpg")}
    pool = write_pool(tmp_path / "pool.parquet", urls)
    run = str(tmp_path / "run")
    cfg = config(distributor="pyspark", output_format="parquet", samples_per_shard=2)
    result = run_download(spark, pool, run, cfg)
    assert result.stats["attempts"][0]["distributor"] == "pyspark"
    got = ledger(spark, run)
    assert {u for u, (d, _, _) in got.items() if d == "kept"} == {"ok0", "ok1", "ok2"}
    assert got["missing"][1] == R.DOWNLOAD_FAILED and "404" in got["missing"][2]
    data = {r["uid"]: r for r in spark.read.parquet(f"{run}/download/data").collect()}
    for uid, row in data.items():
        shard = pq.read_table(f"{run}/download/shards/{row['shard']}").to_pylist()
        (sample,) = [s for s in shard if s["key"] == row["key"]]
        assert sample["uid"] == uid and Image.open(io.BytesIO(sample["jpg"])).size == (row["width"], row["height"])
        assert (row["original_width"], row["original_height"]) == SIZES[int(uid[2:])]


def test_cli_on_a_run_folder_refuses_loopback_by_default(spark, server, tmp_path):
    from pipeline.api import run_ingest
    from pipeline.cli import main

    urls = {"a": server.url("ok_3.jpg"), "b": f"http://localhost:{server.port}/ok_4.jpg", "c": "http://10.0.0.7/x.jpg"}
    pool = write_pool(tmp_path / "pool.parquet", urls)
    run = str(tmp_path / "run")
    run_ingest(spark, pool, run, PipelineConfig())
    before = dict(server.requests)
    assert main(["download", "--input", run, "--output", run, "--processes", "1"]) == 0
    got = ledger(spark, run)
    assert {u: r for u, (_, r, _) in got.items()} == {"a": R.URL_REFUSED, "b": R.URL_REFUSED, "c": R.URL_REFUSED}
    assert "loopback" in got["a"][2] and "loopback" in got["b"][2] and "private" in got["c"][2]
    assert dict(server.requests) == before
    # The run folder's ingest output was the input.
    ingest_uids = {r["uid"] for r in spark.read.parquet(f"{run}/ingest/data").collect()}
    stats = json.loads(open(f"{run}/download/stats.json").read())
    assert set(got) == ingest_uids and stats["input"].endswith("/ingest/data") and stats["kept"] == 0
    assert spark.read.parquet(f"{run}/download/data").count() == 0


def test_config_rejects_bad_download_settings():
    from pipeline.core.config import ConfigError
    from pipeline.registry import load_config

    with pytest.raises(ConfigError, match="download.distributor"):
        load_config(overrides={"download.distributor": "ray"})
    with pytest.raises(ConfigError, match="download.allow_hosts"):
        load_config(overrides={"download.allow_hosts": ["bad/host/"]})
    cfg = load_config(overrides={"download.allow_hosts": ["127.0.0.1", "10.0.0.0/8"]})
    assert cfg.download.allow_hosts == ("127.0.0.1", "10.0.0.0/8")
    assert dataclasses.asdict(cfg)["download"]["allow_hosts"] == ("127.0.0.1", "10.0.0.0/8")


@pytest.mark.shared
@pytest.mark.slow
def test_real_commoncrawl_images_through_the_cli(spark, tmp_path, capfd):
    """Serve a few dozen of fondant's real CommonCrawl images locally and download them with the CLI."""
    import cv2

    from pipeline.cli import main
    from tests.conftest import anchor

    base = anchor("fondant/playground/some-cool-pipeline/data/cool-pipeline/cool-pipeline-20231110150133")
    images = pq.read_table(sorted(glob.glob(f"{base}/download_images/images/*.parquet"))[0]).to_pandas().reset_index().head(40)
    site = tmp_path / "site"
    site.mkdir()
    for row in images.itertuples():
        (site / f"{row.id}.img").write_bytes(row.data)
    with serve_folder(str(site)) as srv:
        urls = {row.id: srv.url(f"{row.id}.img") for row in images.itertuples()}
        pool = write_pool(tmp_path / "pool.parquet", urls)
        run = str(tmp_path / "run")
        capfd.readouterr()
        code = main([
            "download", "--input", pool, "--output", run, "--allow-host", "127.0.0.1", "--processes", "1",
            "--threads", "8", "--image-size", "64", "--distributor", "multiprocessing",
        ])
    assert code == 0
    # stdout is the stage's JSON summary alone: img2dataset's progress went to stderr.
    out, err = capfd.readouterr()
    assert json.loads(out)["rows_in"] == len(urls) and "images per sec" in err
    got = ledger(spark, run)
    assert set(got) == set(urls)
    # The reference: OpenCV decodes the bytes fondant stored (img2dataset decodes with OpenCV too).
    decodable = {r.id for r in images.itertuples() if cv2.imdecode(np.frombuffer(r.data, np.uint8), cv2.IMREAD_UNCHANGED) is not None}
    assert {u for u, (d, _, _) in got.items() if d == "kept"} == decodable
    assert len(decodable) > 30
    data = {r["uid"]: r for r in spark.read.parquet(f"{run}/download/data").collect()}
    for row in images.itertuples():
        if row.id in data:
            assert (data[row.id]["original_width"], data[row.id]["original_height"]) == (row.width, row.height)


# --------------------------------------------------------------------------- export of the downloaded samples


def _download_images(run: str) -> dict[tuple[str, str], bytes]:
    """(download tar, img2dataset key) -> the image bytes stored there."""
    return {(tar, key): files["jpg"] for tar, key, files in tar_samples(f"{run}/download/shards") if "jpg" in files}


def test_export_shards_hold_exactly_the_kept_samples_and_rerun_byte_identical(spark, first_run):
    import hashlib

    import webdataset as wds

    from pipeline.api import run_export
    from pipeline.stages.export import ExportConfig, ExportError

    run = first_run["run"]
    cfg = PipelineConfig(export=ExportConfig(samples_per_shard=3))
    result = run_export(spark, run, run, run, cfg)
    kept = {r.uid: r for r in spark.read.parquet(f"{run}/download/data").collect()}
    images = _download_images(run)
    shards = sorted(Path(run, "export", "shards").glob("*.tar"))
    assert len(kept) >= 7 and len(shards) == -(-len(kept) // 3)
    seen: dict[str, int] = {}
    per_shard: dict[str, int] = {}
    for sample in wds.WebDataset([str(p) for p in shards], shardshuffle=False):
        meta = json.loads(sample["json"])
        uid = meta["uid"]
        seen[uid] = seen.get(uid, 0) + 1
        tar_name = Path(sample["__url__"]).name
        per_shard[tar_name] = per_shard.get(tar_name, 0) + 1
        d = kept[uid]
        assert sample["txt"].decode("utf-8") == d.text
        assert sample["jpg"] == images[(d.shard, d.key)]  # the downloaded bytes, unchanged
        assert meta["url"] == d.url and meta["original_width"] == d.original_width
    assert seen == dict.fromkeys(kept, 1)  # every kept uid in exactly one tar
    sizes = json.loads(Path(run, "export", "shards", "sizes.json").read_text())
    assert sizes == per_shard and set(sizes.values()) <= {3, len(kept) % 3 or 3}
    assert Path(run, "export", "shards", "__len__").read_text() == f"{len(kept)}\n"
    assert result.stats["shards"]["total"] == len(kept) and result.stats["kept"] == len(kept)
    # These uids are not 32 hex digits: a plain sorted list, and the reason in stats.
    assert Path(run, "export", "uids.txt").read_text().split("\n")[:-1] == sorted(kept)
    assert "not 32 hex digits" in result.stats["uid_list_reason"]
    assert sorted(r.uid for r in spark.read.parquet(f"{run}/export/data").collect()) == sorted(kept)

    # The same run again writes byte-identical tars.
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards}
    run_export(spark, run, run, run, cfg, force=True)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(run, "export", "shards").glob("*.tar"))} == before
    # Another export over a complete one needs --force: a training job may be reading it.
    with pytest.raises(ExportError, match="pass --force to replace it"):
        run_export(spark, run, run, run, PipelineConfig(export=ExportConfig(samples_per_shard=5)))
    assert Path(run, "export", "_COMPLETE").exists()


def test_export_with_a_download_shard_gone_is_an_error_not_a_gap(spark, first_run, tmp_path):
    import shutil

    from pipeline.api import run_export
    from pipeline.kernels.wds import MissingImageError
    from pipeline.stages.export import ExportConfig

    run = tmp_path / "run"
    shutil.copytree(first_run["run"], run, ignore=shutil.ignore_patterns("export"))
    used = spark.read.parquet(str(run / "download" / "data")).orderBy("uid").first()
    (run / "download" / "shards" / used.shard).unlink()  # the tar holding a kept uid's image
    with pytest.raises(MissingImageError, match="cannot read the download shard"):
        run_export(spark, str(run), str(run), str(run), PipelineConfig(export=ExportConfig(samples_per_shard=4)))
    assert not (run / "export" / "_COMPLETE").exists()
