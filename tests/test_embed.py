"""The embed stage on CPU with a tiny random open_clip model: every input layout, bad images, resume, precomputed.

References are independent of the stage: a direct open_clip forward with open_clip's own
preprocess transform, numpy normalisation for precomputed vectors, and the uids and reasons
that the fixtures were built with.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.registry import PipelineConfig
from pipeline.stages.embed import EmbedConfig

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "pipeline" / "kernels" / "model_configs"
RNG = np.random.default_rng(7)


# --------------------------------------------------------------------------- generated inputs


def picture(w: int, h: int, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """A photo-like image: smooth gradients plus a little noise."""
    y, x = np.mgrid[0:h, 0:w]
    phase = RNG.random(3) * 6
    base = np.stack([np.sin(x / (7 + 5 * c) + y / (11 + 3 * c) + phase[c]) for c in range(3)], axis=-1)
    arr = ((base + 1) * 110 + RNG.normal(0, 8, (h, w, 3))).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, fmt, quality=90)
    return buf.getvalue()


def bomb_png(w: int = 30000, h: int = 30000) -> bytes:
    """A PNG whose header claims w x h pixels (900 megapixels), with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def bad_images() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected reason) for every kind of unusable image."""
    good = picture(200, 150)
    return {
        "corrupt": (good[:200] + bytes(RNG.integers(0, 256, 3000, dtype=np.uint8)), "image_decode_failed"),
        "truncated": (good[: len(good) // 2], "image_decode_failed"),
        "empty": (b"", "image_decode_failed"),
        "notimage": (b"<html><body>not found</body></html>", "image_decode_failed"),
        "bomb": (bomb_png(), "image_decode_failed"),
    }


def write_tar(path: Path, samples: list[dict]) -> None:
    """img2dataset's WebDataset layout: <key>.jpg, <key>.txt, <key>.json (with uid)."""
    with tarfile.open(path, "w") as tar:
        for s in samples:
            members = {"json": json.dumps({"uid": s["uid"], "key": s["key"], "status": "success"}).encode()}
            if s.get("image") is not None:
                members[s.get("ext", "jpg")] = s["image"]
            if s.get("text") is not None:
                members["txt"] = s["text"].encode()
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{s['key']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A seeded tiny open_clip model built directly with open_clip, saved as a checkpoint."""
    open_clip.add_model_config(MODEL_CONFIGS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip")
    model.eval()
    ckpt = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return {"model": model, "preprocess": preprocess, "tokenizer": open_clip.get_tokenizer("tiny-clip"), "ckpt": str(ckpt)}


def ref_image(reference, data: bytes) -> np.ndarray:
    with torch.no_grad():
        x = reference["preprocess"](Image.open(io.BytesIO(data))).unsqueeze(0)
        return torch.nn.functional.normalize(reference["model"].encode_image(x), dim=-1)[0].numpy()


def ref_text(reference, text: str) -> np.ndarray:
    with torch.no_grad():
        f = reference["model"].encode_text(reference["tokenizer"]([text]))
        return torch.nn.functional.normalize(f, dim=-1)[0].numpy()


def read_output(spark, run: str) -> tuple[dict, dict]:
    data = {r["uid"]: r.asDict() for r in spark.read.parquet(f"{run}/embed/data").collect()}
    ledger = {r["uid"]: (r["decision"], r["reason"], r["detail"]) for r in spark.read.parquet(f"{run}/decisions/stage=embed").collect()}
    return data, ledger


def cfg_for(**embed) -> PipelineConfig:
    return PipelineConfig(embed=EmbedConfig(model="tiny-clip", device="cpu", batch_size=4, workers=0, **embed))


# --------------------------------------------------------------------------- (a) a run folder after download


@pytest.fixture(scope="module")
def download_run(tmp_path_factory):
    """A run folder whose download stage is complete: data listing uids, two tar shards."""
    root = tmp_path_factory.mktemp("dlrun") / "run"
    shards = root / "download" / "shards"
    shards.mkdir(parents=True)
    expected: dict[str, str | None] = {}
    samples: dict[str, dict] = {}
    tar0 = []
    for i in range(6):
        s = {"key": f"0000{i:05d}", "uid": f"a{i}", "image": picture(160 + 40 * i, 120 + 17 * i), "text": f"a photo number {i}"}
        tar0.append(s)
    tar0[1]["text"] = None  # no caption -> null text embedding
    tar0.append({"key": "000000006", "uid": "png0", "image": picture(90, 70, "PNG"), "ext": "png", "text": "a png"})
    for j, (name, (data, reason)) in enumerate(bad_images().items()):
        tar0.append({"key": f"00000{10 + j:04d}", "uid": f"bad_{name}", "image": data, "text": name})
        expected[f"bad_{name}"] = reason
    tar0.append({"key": "000000099", "uid": "no_bytes", "image": None, "text": "json only"})
    expected["no_bytes"] = "no_image"
    tar1 = [{"key": f"0001{i:05d}", "uid": f"b{i}", "image": picture(64 + 30 * i, 200), "text": f"second shard {i}"} for i in range(5)]
    tar1.append({"key": "000100099", "uid": "stray", "image": picture(80, 80), "text": "not in the download data"})
    write_tar(shards / "00000.tar", tar0)
    write_tar(shards / "00001.tar", tar1)
    for s in tar0 + tar1:
        samples[s["uid"]] = s
        expected.setdefault(s["uid"], None)
    del expected["stray"]
    expected["never_downloaded"] = "no_image"
    # img2dataset writes a metadata Parquet beside each tar; it must not be read as an image shard.
    pq.write_table(pa.table({"key": ["x"], "status": ["success"]}), shards / "00000.parquet")
    uids = sorted(expected)
    pq.write_table(
        pa.table({"uid": uids, "url": [f"http://h/{u}" for u in uids], "text": [f"listed {u}" for u in uids]}),
        root / "download" / "data.parquet",
    )
    (root / "download" / "data").mkdir()
    os.rename(root / "download" / "data.parquet", root / "download" / "data" / "part-0.parquet")
    (root / "download" / "_COMPLETE").write_text("{}")
    return {"root": str(root), "expected": expected, "samples": samples}


def test_run_folder_through_cli(spark, download_run, reference, capsys):
    run = download_run["root"]
    rc = main([
        "embed", "--input", run, "--output", run, "--model", "tiny-clip", "--checkpoint", reference["ckpt"],
        "--device", "cpu", "--batch-size", "4", "--workers", "2",
    ])
    assert rc == 0
    stats = json.loads(capsys.readouterr().out)
    data, ledger = read_output(spark, run)
    expected = download_run["expected"]
    # every listed uid has exactly one ledger row with the reason the fixture was built with
    assert set(ledger) == set(expected)
    for uid, reason in expected.items():
        assert ledger[uid][1] == reason, (uid, ledger[uid])
        assert ledger[uid][0] == ("kept" if reason is None else "dropped")
    assert set(data) == {u for u, r in expected.items() if r is None}
    assert "decompression bomb" in ledger["bad_bomb"][2]
    assert "never_downloaded" in ledger and ledger["never_downloaded"][2].startswith("no sample with this uid")
    assert stats["dim"] == 32 and stats["dtype"] == "float32" and stats["samples_not_in_download_data"] == 1
    assert stats["kept"] == len(data) and stats["weights"] == "checkpoint"

    samples = download_run["samples"]
    for uid, row in data.items():
        image = np.asarray(row["image_embedding"], np.float32)
        assert image.shape == (32,) and abs(np.linalg.norm(image) - 1) < 1e-5
        text = samples[uid]["text"]
        if text is None:
            assert row["text_embedding"] is None and row["text"] == f"listed {uid}"
        else:
            assert row["text"] == text
            np.testing.assert_allclose(row["text_embedding"], ref_text(reference, text), atol=1e-5)
    # PNG: the loader's pixels are open_clip's exactly, so the embedding is a direct forward's
    np.testing.assert_allclose(data["png0"]["image_embedding"], ref_image(reference, samples["png0"]["image"]), atol=1e-5)
    # JPEGs decoded at reduced size (draft) differ only in resampling detail from open_clip's path
    for uid in ("a3", "a5", "b4"):
        cos = float(np.dot(data[uid]["image_embedding"], ref_image(reference, samples[uid]["image"])))
        assert cos > 0.99, (uid, cos)


def test_output_types_for_spark_duckdb_pyarrow(spark, download_run):
    import duckdb

    from tests.test_schemas import assert_matches_contract

    data_dir = f"{download_run['root']}/embed/data"
    assert_matches_contract(spark.read.parquet(data_dir), "embed")
    assert pq.read_table(data_dir).schema.field("image_embedding").type.value_type == pa.float32()
    dims = duckdb.sql(f"SELECT DISTINCT len(image_embedding) FROM read_parquet('{data_dir}/*.parquet')").fetchall()
    assert dims == [(32,)]


# --------------------------------------------------------------------------- (b) img2dataset Parquet output, resume, Spark path


@pytest.fixture(scope="module")
def parquet_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("i2d_parquet")
    rows = []
    for s in range(2):
        part = {"jpg": [], "key": [], "uid": [], "caption": [], "status": [], "error_message": []}
        for i in range(7):
            part["jpg"].append(picture(100 + 20 * i, 90 + 10 * s))
            part["key"].append(f"{s:04d}{i:05d}")
            part["uid"].append(f"p{s}_{i}")
            part["caption"].append(None if i == 2 else f"parquet caption {s} {i}")
            part["status"].append("success")
            part["error_message"].append(None)
        part["jpg"][5], part["status"][5], part["error_message"][5] = None, "failed_to_download", "HTTP Error 404"
        rows.append(part)
        pq.write_table(pa.table(part, schema=pa.schema([
            ("jpg", pa.binary()), ("key", pa.string()), ("uid", pa.string()), ("caption", pa.string()),
            ("status", pa.string()), ("error_message", pa.string()),
        ])), folder / f"{s:05d}.parquet", row_group_size=3)
    return {"folder": str(folder), "rows": rows}


def test_parquet_shards_and_resume(spark, parquet_folder, tmp_path):
    from pipeline.api import run_embed

    run = str(tmp_path / "run")
    first = run_embed(spark, parquet_folder["folder"], run, cfg_for())
    data, ledger = read_output(spark, run)
    assert len(ledger) == 14
    assert {u for u, v in ledger.items() if v[1] == "no_image"} == {"p0_5", "p1_5"}
    assert "HTTP Error 404" in ledger["p0_5"][2]
    assert set(data) == {f"p{s}_{i}" for s in range(2) for i in range(7) if i != 5}
    assert data["p1_2"]["text_embedding"] is None and data["p1_3"]["text_embedding"] is not None
    assert first.stats["shards_written"] == 2

    shards = Path(run) / "embed" / "shards"
    kept_mtime = (shards / "00000.parquet").stat().st_mtime_ns
    os.remove(shards / "00001.parquet")
    # a crash mid-write leaves only a hidden temporary file: it must not count as done
    (shards / ".00001.parquet.tmp-deadbeef").write_bytes(b"PAR1 half a file")
    second = run_embed(spark, parquet_folder["folder"], run, cfg_for())
    assert not second.skipped
    assert second.stats["shards_reused"] == 1 and second.stats["shards_written"] == 1
    assert (shards / "00000.parquet").stat().st_mtime_ns == kept_mtime
    again, ledger2 = read_output(spark, run)
    assert ledger2 == ledger and set(again) == set(data)
    for uid in data:
        np.testing.assert_array_equal(again[uid]["image_embedding"], data[uid]["image_embedding"])

    assert run_embed(spark, parquet_folder["folder"], run, cfg_for()).skipped
    # a re-downloaded input shard (new bytes, new mtime) is embedded again; the other is reused
    source = Path(parquet_folder["folder"]) / "00000.parquet"
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    third = run_embed(spark, parquet_folder["folder"], run, cfg_for())
    assert third.stats["shards_written"] == 1 and third.stats["shards_reused"] == 1
    assert (shards / "00000.parquet").stat().st_mtime_ns != kept_mtime



@pytest.mark.slow
def test_spark_executor_path_matches_driver(spark, parquet_folder, tmp_path):
    """One Spark task per shard (CPU here: no GPU resources in local mode) gives the driver's result."""
    from pipeline.api import run_embed

    runs = {}
    for executor in ("driver", "spark"):
        run = str(tmp_path / executor)
        result = run_embed(spark, parquet_folder["folder"], run, cfg_for(executor=executor))
        assert result.stats["shards_written"] == 2
        runs[executor] = read_output(spark, run)
    assert result.stats["devices"] == ["cpu"]
    (driver, driver_ledger), (on_spark, spark_ledger) = runs["driver"], runs["spark"]
    assert spark_ledger == driver_ledger and set(on_spark) == set(driver)
    for uid in driver:
        np.testing.assert_allclose(on_spark[uid]["image_embedding"], driver[uid]["image_embedding"], atol=1e-6)
        if driver[uid]["text_embedding"] is not None:
            np.testing.assert_allclose(on_spark[uid]["text_embedding"], driver[uid]["text_embedding"], atol=1e-6)


# --------------------------------------------------------------------------- (c) a folder of image files


def test_image_folder_random_weights(spark, tmp_path, caplog):
    from pipeline.api import run_embed

    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    expected = {}
    for i in range(4):
        (folder / f"img{i}.jpg").write_bytes(picture(150 + 10 * i, 120))
        expected[f"img{i}"] = None
    (folder / "img0.txt").write_text("a caption from a sidecar\n")
    (folder / "sub" / "gray.jpg").write_bytes(picture(300, 200, mode="L"))
    expected["gray"] = None
    (folder / "sub" / "img1.png").write_bytes(picture(40, 40, "PNG"))  # same stem as img1.jpg
    expected["img1#dup1"] = "duplicate_uid"
    for name, (data, reason) in bad_images().items():
        (folder / f"{name}.jpg").write_bytes(data)
        expected[name] = reason
    run = str(tmp_path / "run")
    with caplog.at_level("WARNING"):
        result = run_embed(spark, str(folder), run, cfg_for(images_per_shard=5))
    assert any("RANDOM weights" in r.getMessage() for r in caplog.records)
    assert result.stats["layout"] == "files" and result.stats["shards"] == 3
    data, ledger = read_output(spark, run)
    assert {u: v[1] for u, v in ledger.items()} == expected
    assert data["img0"]["text"] == "a caption from a sidecar" and data["img2"]["text_embedding"] is None
    norms = [np.linalg.norm(r["image_embedding"]) for r in data.values()]
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


# --------------------------------------------------------------------------- the loader against open_clip's transform


def test_loader_pixels_match_open_clip_transform():
    from open_clip.transform import image_transform

    from pipeline.kernels.imageio import PreprocessSpec, load_image, normalize

    for size in (64, 224):
        spec = PreprocessSpec(size=size)
        transform = image_transform(size, is_train=False)
        for w, h, fmt, mode in [(300, 200, "PNG", "RGB"), (199, 401, "PNG", "RGB"), (700, 500, "JPEG", "RGB"), (640, 900, "JPEG", "L"), (30, 20, "PNG", "RGBA")]:
            data = picture(w, h, fmt, mode)
            want = transform(Image.open(io.BytesIO(data)))
            exact = normalize(torch.from_numpy(load_image(data, spec, draft=False).copy())[None], spec)[0]
            assert torch.equal(exact, want), (size, w, h, fmt, mode)
            fast = normalize(torch.from_numpy(load_image(data, spec, draft=True).copy())[None], spec)[0]
            mad = ((fast - want) * torch.tensor(spec.std)[:, None, None]).abs().mean().item() * 255
            assert mad < 2.0, (size, w, h, fmt, mode, mad)


# --------------------------------------------------------------------------- precomputed embeddings and errors


def test_precomputed_npz_and_npy(spark, tmp_path, capsys):
    rng = np.random.default_rng(3)
    n = 9
    l14 = rng.normal(size=(n, 16)).astype(np.float16)
    b32 = rng.normal(size=(n, 8)).astype(np.float16)
    b32[4] = 0  # an unusable row
    np.savez(tmp_path / "emb.npz", l14_img=l14, l14_txt=rng.normal(size=(n, 16)).astype(np.float16), b32_img=b32)
    uids = [f"{i:032x}" for i in range(n)]
    pq.write_table(pa.table({"uid": uids, "text": [f"t{i}" for i in range(n)]}), tmp_path / "uids.parquet")
    run = str(tmp_path / "run")
    rc = main(["embed", "--npz", str(tmp_path / "emb.npz"), "--uids", str(tmp_path / "uids.parquet"), "--npz-key", "b32_img", "--output", run])
    assert rc == 0
    data, ledger = read_output(spark, run)
    assert ledger[uids[4]][1] == "invalid_embedding" and len(data) == n - 1
    want = b32.astype(np.float32) / np.linalg.norm(b32.astype(np.float32), axis=1, keepdims=True).clip(1e-30)
    for i, uid in enumerate(uids):
        if i != 4:
            np.testing.assert_allclose(data[uid]["image_embedding"], want[i], rtol=1e-6)
            assert data[uid]["text_embedding"] is None and data[uid]["text"] == f"t{i}"
    capsys.readouterr()

    np.save(tmp_path / "emb.npy", l14[:5].astype(np.float32))
    run2 = str(tmp_path / "run2")
    assert main(["embed", "--npy", str(tmp_path / "emb.npy"), "--uids", str(tmp_path / "uids.parquet"), "--output", run2]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "5 rows" in err and "9 uids" in err

    assert main(["embed", "--npz", str(tmp_path / "emb.npz"), "--uids", str(tmp_path / "uids.parquet"), "--npz-key", "nope", "--output", run2]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "l14_img" in err and "b32_img" in err


def test_missing_checkpoint_is_one_line(tmp_path, capsys, download_run):
    rc = main(["embed", "--input", download_run["root"], "--output", str(tmp_path / "run"), "--model", "tiny-clip",
               "--checkpoint", str(tmp_path / "nope.pt"), "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint not found" in err and "nope.pt" in err


def test_model_configs_load_when_the_package_runs_from_a_zip(tmp_path):
    """Under spark-submit --py-files the package is a zip: tiny-clip's config still reaches open_clip."""
    import subprocess
    import sys

    from tests.pipeline_runs import child_env, package_zip

    zipped = package_zip(tmp_path / "curate.zip")
    script = (
        "import json, open_clip, pipeline\n"
        "from pipeline.kernels.encoder import model_config_dir, register_model_configs\n"
        "register_model_configs()\n"
        "model = open_clip.create_model('tiny-clip')\n"
        "print(json.dumps({'package': pipeline.__file__, 'configs': str(model_config_dir()),"
        " 'params': sum(p.numel() for p in model.parameters())}))\n"
    )
    from tests.conftest import NETGUARD_DIR

    # the zip alone holds the package; the network guard's folder follows it (it holds no `pipeline`)
    env = {**child_env(), "PYTHONPATH": os.pathsep.join([str(zipped), str(NETGUARD_DIR)])}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["package"].startswith(str(zipped)) and not got["configs"].startswith(str(zipped))
    assert got["params"] > 0
