"""The worker side of the download stage: img2dataset's downloader and resizer, guarded.

These classes are pickled to img2dataset's worker processes (multiprocessing) or Spark executors
(pyspark distributor), so they live in a module of their own that imports img2dataset at the top;
the driver imports it only when a download runs.
"""

from __future__ import annotations

import io
import math
import urllib.request
import warnings

# Importing this module runs pipeline/__init__.py first, which switches off albumentations'
# update check (img2dataset's resizer imports it) in every worker that unpickles these classes.
from img2dataset.downloader import Downloader
from img2dataset.resizer import Resizer
from PIL import Image

from pipeline.kernels.imageio import exif_orientation, turn_upright
from pipeline.kernels.urlguard import GuardPolicy, build_opener


class GuardedDownloader(Downloader):
    """img2dataset's Downloader with the URL guard installed as urllib's opener in the worker.

    img2dataset fetches with `urllib.request.urlopen`, which uses the installed opener: ours
    checks every connection (redirect targets included) before a packet is sent, and opens
    http(s) only. Installed on every shard, because Spark reuses Python workers across tasks.
    """

    def __init__(self, *args, guard: GuardPolicy, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    def __call__(self, row):
        urllib.request.install_opener(build_opener(self.guard))
        return super().__call__(row)


def read_header(data: io.BytesIO) -> tuple[tuple[int, int] | str | None, int]:
    """From the image header, without decoding pixels: (width, height), a message for a bomb or
    None if Pillow cannot tell; and the EXIF orientation (1, upright, when there is none)."""
    data.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(data) as im:
                return im.size, exif_orientation(im)
    except Image.DecompressionBombError as exc:
        return f"image refused before decoding: {exc}", 1
    except Exception:  # noqa: BLE001 - Pillow cannot read the header: let img2dataset's decoder judge
        return None, 1
    finally:
        data.seek(0)


def upright(data: io.BytesIO, orientation: int) -> io.BytesIO:
    """The image turned as its EXIF orientation says, re-encoded losslessly (PNG)."""
    out = io.BytesIO()
    with Image.open(data) as im:
        turn_upright(im, orientation).save(out, format="PNG")
    out.seek(0)
    return out


# EXIF orientation -> where a point (x, y), as fractions of the stored image, lands in the
# upright image: the same transposes as pipeline.kernels.imageio.turn_upright.
_UPRIGHT_POINT = {
    2: lambda x, y: (1 - x, y), 3: lambda x, y: (1 - x, 1 - y), 4: lambda x, y: (x, 1 - y),
    5: lambda x, y: (y, x), 6: lambda x, y: (1 - y, x), 7: lambda x, y: (1 - y, 1 - x),
    8: lambda x, y: (y, 1 - x),
}


def upright_boxes(boxes: list, orientation: int) -> list[list[float]]:
    """[x1, y1, x2, y2] boxes (fractions of the stored image) moved as turn_upright moves the pixels."""
    move = _UPRIGHT_POINT.get(orientation)
    if move is None:
        return [list(b) for b in boxes]
    out = []
    for x1, y1, x2, y2 in boxes:
        (ax, ay), (bx, by) = move(x1, y1), move(x2, y2)
        out.append([min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)])
    return out


def bad_box(boxes) -> str | None:
    """Why a face-box list cannot be blurred (not a list of four finite numbers each), or None."""
    if not isinstance(boxes, (list, tuple)):
        return f"face_bboxes is {type(boxes).__name__}, not a list of [x1, y1, x2, y2]"
    for box in boxes:
        if (
            not isinstance(box, (list, tuple))
            or len(box) != 4
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
        ):
            return f"face box {box!r} is not [x1, y1, x2, y2] of finite numbers"
    return None


class BoundedResizer(Resizer):
    """img2dataset's Resizer that refuses images whose header claims more than max_image_pixels
    and turns EXIF-rotated images upright before resizing (face boxes turned with them).

    OpenCV (img2dataset's decoder) would allocate width x height x channels bytes before
    finding out the data is short: a 30000 x 30000 PNG of a few kilobytes asks for 2.7 GB.
    """

    def __init__(self, *args, max_image_pixels: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_image_pixels = max_image_pixels

    def __call__(self, img_stream, blurring_bbox_list=None):
        if img_stream.getbuffer().nbytes == 0:
            return None, None, None, None, None, "empty response (0 bytes)"
        size, orientation = read_header(img_stream)
        if isinstance(size, str):
            return None, None, None, None, None, size
        if size is not None and size[0] * size[1] > self.max_image_pixels:
            w, h = size
            return None, None, None, None, None, (
                f"image of {w}x{h} pixels exceeds max_image_pixels={self.max_image_pixels}; refused before decoding"
            )
        if blurring_bbox_list is not None:
            # A box that cannot be read would leave a face unblurred (or crash the blurrer):
            # the image is not stored rather than stored unblurred.
            why = bad_box(blurring_bbox_list)
            if why is not None:
                return None, None, None, None, None, why
        if orientation != 1:
            # img2dataset's OpenCV decoder ignores EXIF orientation: a phone photo would be
            # stored on its side. Turn it upright first (rare, so the re-encode costs little).
            # Face boxes refer to the pixels as stored (DataComp downloaded with img2dataset,
            # whose decoder ignores EXIF), so they turn with the image.
            try:
                img_stream = upright(img_stream, orientation)
            except Exception:  # noqa: BLE001 - undecodable: img2dataset's decoder reports why
                img_stream.seek(0)
            else:
                if blurring_bbox_list is not None:
                    blurring_bbox_list = upright_boxes(blurring_bbox_list, orientation)
        return super().__call__(img_stream, blurring_bbox_list)
