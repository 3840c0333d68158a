"""Faces: ingest keeps DataComp's face_bboxes, and download.blur_faces blurs them with img2dataset's blurrer."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.core.config import ConfigError
from pipeline.localserve import serve_folder
from pipeline.registry import PipelineConfig
from pipeline.stages.download import DownloadConfig
from tests.pipeline_runs import tar_samples

pytest.importorskip("img2dataset")

W, H = 200, 100
LEFT_HALF = [[0.0, 0.0, 0.5, 1.0]]
# The checkerboard's grey levels have a standard deviation of 127.5 everywhere.
BOARD_STD = 127.5
# img2dataset's blurrer widens a box by 10% of its longer side and feathers the mask's edge with
# the same Gaussian: a 100-pixel box ends affecting pixels about 25 columns past its edge.
INSIDE = np.s_[10:90, 10:90]
OUTSIDE = np.s_[:, 150:200]


def checkerboard(w: int, h: int, cell: int = 4) -> np.ndarray:
    """Black and white cells of `cell` pixels, RGB: as much local variance as an image can have."""
    y, x = np.mgrid[0:h, 0:w]
    grey = (((x // cell) + (y // cell)) % 2 * 255).astype(np.uint8)
    return np.stack([grey] * 3, axis=-1)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def grey(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64)


def tar_jpegs(shards_dir: str) -> dict[str, bytes]:
    """uid -> the stored image bytes, read from the download stage's tars."""
    return {json.loads(files["json"])["uid"]: files["jpg"] for _, _, files in tar_samples(shards_dir)}


def config(blur: bool) -> PipelineConfig:
    return PipelineConfig(
        download=DownloadConfig(
            resize_mode="no", processes=1, threads=4, timeout=5.0, allow_hosts=("127.0.0.1",),
            distributor="multiprocessing", blur_faces=blur,
        )
    )


# --------------------------------------------------------------------------- the kernel


@pytest.mark.parametrize(
    "orientation, expected",
    [
        (1, [0.1, 0.2, 0.3, 0.6]),
        (2, [0.7, 0.2, 0.9, 0.6]),  # mirrored left-right
        (3, [0.7, 0.4, 0.9, 0.8]),  # turned 180 degrees
        (4, [0.1, 0.4, 0.3, 0.8]),  # mirrored top-bottom
        (5, [0.2, 0.1, 0.6, 0.3]),  # transposed
        (6, [0.4, 0.1, 0.8, 0.3]),  # stored turned 90 degrees left: shown turned right
        (7, [0.4, 0.7, 0.8, 0.9]),  # transverse
        (8, [0.2, 0.7, 0.6, 0.9]),  # stored turned 90 degrees right: shown turned left
    ],
)
def test_boxes_turn_as_pillow_turns_the_pixels(orientation, expected):
    from pipeline.kernels.fetch import upright_boxes
    from pipeline.kernels.imageio import turn_upright

    box = [0.1, 0.2, 0.3, 0.6]
    assert upright_boxes([box], orientation) == [pytest.approx(expected)]
    # The same box painted on a stored 40x20 image and turned by Pillow lands on the same fractions.
    stored = Image.new("L", (40, 20))
    stored.paste(255, (4, 4, 12, 12))
    shown = turn_upright(stored, orientation)
    x1, y1, x2, y2 = shown.getbbox()
    w, h = shown.size
    assert [x1 / w, y1 / h, x2 / w, y2 / h] == pytest.approx(expected)


def resizer():
    from img2dataset.blurrer import BoundingBoxBlurrer

    from pipeline.kernels.fetch import BoundedResizer

    return BoundedResizer(
        image_size=256, resize_mode="no", resize_only_if_bigger=False, encode_quality=95, encode_format="jpg",
        max_image_pixels=10**8, blurrer=BoundingBoxBlurrer(),
    )


def test_an_exif_turned_image_is_blurred_where_its_box_lands():
    # Stored 100 wide and 200 tall with EXIF orientation 6: shown 200 x 100, the stored top half
    # (the box) on the right.
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(checkerboard(100, 200)).save(buf, "JPEG", quality=100, exif=exif)
    data, width, height, *_, error = resizer()(io.BytesIO(buf.getvalue()), [[0.0, 0.0, 1.0, 0.5]])
    assert error is None and (width, height) == (200, 100)
    shown = grey(data)
    assert shown[10:90, 110:190].std() < 10, "the box, turned with the image, is blurred"
    assert shown[:, :50].std() > 120, "the stored bottom half, now on the left, is not"


@pytest.mark.parametrize(
    "boxes, fragment",
    [([[0.0, 0.0, 0.5]], "[0.0, 0.0, 0.5]"), ([[0.0, 0.0, float("nan"), 1.0]], "nan"), ("0 0 1 1", "is str, not a list")],
)
def test_unreadable_boxes_refuse_the_image_rather_than_store_it_unblurred(boxes, fragment):
    data, *_, error = resizer()(io.BytesIO(png(checkerboard(W, H))), boxes)
    assert data is None and error is not None and fragment in error, error


# --------------------------------------------------------------------------- ingest and download


@pytest.fixture(scope="module")
def faces_runs(spark, tmp_path_factory):
    """A pool of the same checkerboard under three uids (a box over the left half, null, no boxes),
    ingested, then downloaded with blur_faces on and, from the same ingest output, off."""
    from pipeline.api import run_download, run_ingest

    root = tmp_path_factory.mktemp("faces")
    site = root / "site"
    site.mkdir()
    original = checkerboard(W, H)
    (site / "board.png").write_bytes(png(original))
    with serve_folder(str(site)) as srv:
        pool = root / "pool.parquet"
        uids = ["empty", "face", "nobox"]
        pq.write_table(
            pa.table(
                {
                    "uid": uids,
                    "url": [srv.url("board.png")] * 3,
                    "text": [f"checkerboard {u}" for u in uids],  # distinct: ingest drops repeated (url, text)
                    # float32 in the file: ingest stores float64.
                    "face_bboxes": pa.array([[], LEFT_HALF, None], type=pa.list_(pa.list_(pa.float32()))),
                }
            ),
            pool,
        )
        on, off = root / "on", root / "off"
        run_ingest(spark, str(pool), str(on), PipelineConfig())
        run_download(spark, str(on), str(on), config(blur=True))
        run_download(spark, f"{on}/ingest/data", str(off), config(blur=False))
    return {
        "original": grey(png(original)),
        "ingest": str(on / "ingest" / "data"),
        "download": str(on / "download" / "data"),
        "on": tar_jpegs(f"{on}/download/shards"),
        "off": tar_jpegs(f"{off}/download/shards"),
    }


def test_ingest_keeps_face_bboxes_as_lists_of_doubles(spark, faces_runs):
    df = spark.read.parquet(faces_runs["ingest"])
    assert df.schema["face_bboxes"].dataType.simpleString() == "array<array<double>>"
    got = {r["uid"]: r["face_bboxes"] for r in df.collect()}
    assert got == {"face": LEFT_HALF, "nobox": None, "empty": []}


def test_blur_faces_blurs_inside_the_box_and_leaves_the_rest(faces_runs):
    original, blurred = faces_runs["original"], grey(faces_runs["on"]["face"])
    assert original[INSIDE].std() == BOARD_STD
    assert blurred[INSIDE].std() < 10, "the checkerboard inside the box is smoothed to grey"
    # Outside the box: the original, up to JPEG at quality 95, and the very pixels stored without blurring.
    assert np.abs(blurred[OUTSIDE] - original[OUTSIDE]).mean() < 2
    assert np.array_equal(blurred[OUTSIDE], grey(faces_runs["off"]["face"])[OUTSIDE])


def test_rows_without_boxes_are_stored_as_without_blurring(faces_runs):
    for uid in ("nobox", "empty"):
        assert faces_runs["on"][uid] == faces_runs["off"][uid], uid


def test_without_blur_faces_nothing_is_blurred(faces_runs):
    original = faces_runs["original"]
    for uid in ("face", "nobox", "empty"):
        stored = grey(faces_runs["off"][uid])
        assert stored[INSIDE].std() > 120, uid
        assert np.abs(stored - original).mean() < 2, uid


def test_download_keeps_the_boxes_in_its_data(spark, faces_runs):
    got = {r["uid"]: r["face_bboxes"] for r in spark.read.parquet(faces_runs["download"]).collect()}
    assert got == {"face": LEFT_HALF, "nobox": None, "empty": []}


def test_blur_faces_without_the_column_is_a_config_error(spark, tmp_path):
    from pipeline.api import run_download

    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"uid": ["a"], "url": ["http://127.0.0.1:9/a.jpg"], "text": ["x"]}), pool)
    with pytest.raises(ConfigError, match="no face_bboxes column"):
        run_download(spark, str(pool), str(tmp_path / "run"), config(blur=True))
