"""The image loader of the embed stage: bytes -> CLIP-sized uint8 pixels, fast and safe on web images.

Geometry is open_clip's evaluation transform (resize the shortest side with bicubic, centre
crop, convert to RGB, to tensor, normalise), step for step, so a PNG gives the very same
pixels; one addition: images stored on their side with an EXIF orientation are turned
upright (open_clip's transform leaves them as stored). JPEGs are decoded at a reduced size
(Pillow's `draft`: libjpeg scales by 1/2, 1/4 or 1/8 inside the DCT) as long as the decoded
image still covers the target size; the resize then maps the same source region (the box
`draft` returns), so only resampling detail differs.

Workers return uint8 HWC arrays (4x smaller than float tensors through shared memory); the
float conversion and normalisation (`normalize`) run on the model's device.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Pillow's own default bomb limit (about 89.5 megapixels); anything larger is refused unread.
DEFAULT_MAX_PIXELS = 89_478_485
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that turns the stored pixels upright (as browsers show them).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}


class ImageDecodeError(ValueError):
    """An image that cannot be used: not an image, truncated, corrupt, too many pixels."""


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag of an opened image: 1 upright (or no tag), 2-8 turned or mirrored."""
    try:
        value = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF: take the pixels as stored
        return 1
    return value if value in _UPRIGHT else 1


def turn_upright(im: Image.Image, orientation: int) -> Image.Image:
    """The image as its EXIF `orientation` says it is shown (unchanged for 1, upright)."""
    return im.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else im


@dataclass(frozen=True)
class PreprocessSpec:
    """What the model expects: square `size`, resize mode, interpolation, mean and std."""

    size: int = 224
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD

    @classmethod
    def from_model(cls, model) -> PreprocessSpec:
        """Read open_clip's preprocess config attached to the model (`model.visual.preprocess_cfg`)."""
        cfg = dict(getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {})
        size = cfg.get("size", 224)
        if isinstance(size, (tuple, list)):
            if len(set(size)) != 1:
                raise ImageDecodeError(f"non-square model input {size} is not supported")
            size = size[0]
        return cls(
            size=int(size),
            resize_mode=cfg.get("resize_mode", "shortest"),
            interpolation=cfg.get("interpolation", "bicubic"),
            mean=tuple(cfg.get("mean", OPENAI_MEAN)),
            std=tuple(cfg.get("std", OPENAI_STD)),
        )

    def validate(self) -> None:
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode {self.resize_mode!r} is not supported (shortest, squash)")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {sorted(_RESAMPLE)}")


def resized_size(w: int, h: int, size: int) -> tuple[int, int]:
    """torchvision's Resize(int): the shortest side becomes `size`, the other is truncated."""
    if w <= h:
        return size, int(size * h / w)
    return int(size * w / h), size


def center_crop(rw: int, rh: int, size: int) -> tuple[int, int, int, int]:
    """torchvision's CenterCrop box: offsets rounded half to even (Python's round)."""
    left, top = int(round((rw - size) / 2.0)), int(round((rh - size) / 2.0))
    return left, top, left + size, top + size


def load_image(data: bytes, spec: PreprocessSpec, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = True) -> np.ndarray:
    """Decode `data` and return the model's input pixels: uint8 (size, size, 3).

    Raises ImageDecodeError (with the cause) for anything unusable: empty, not an image,
    truncated, corrupt, or more than `max_pixels` pixels (checked on the header, before decoding).
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit decides; Pillow's bomb warning/error must not fire first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                im = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        w, h = im.size
        if w < 1 or h < 1:
            raise ImageDecodeError(f"image has no pixels ({w}x{h})")
        if w * h > max_pixels:
            raise ImageDecodeError(f"decompression bomb: {w}x{h} = {w * h} pixels > limit {max_pixels}")
        source = None  # the whole image
        if draft and im.format == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale while both sides stay >= size (Pillow picks the
            # scale); `source` is the original extent in the reduced image's coordinates.
            reduced = im.draft(im.mode if im.mode in ("RGB", "L") else None, (spec.size, spec.size))
            source = reduced[1] if reduced is not None else None
        im.load()
        resample = _RESAMPLE[spec.interpolation]
        if spec.resize_mode == "squash":
            out = im.resize((spec.size, spec.size), resample, box=source)
        else:
            rw, rh = resized_size(w, h, spec.size)
            out = im.resize((rw, rh), resample, box=source)
            if (rw, rh) != (spec.size, spec.size):
                out = out.crop(center_crop(rw, rh, spec.size))
        if out.mode != "RGB":
            # open_clip converts after resizing (MaybeConvertMode); same order, same pixels.
            out = out.convert("RGB")
        # Stored on its side (phone photos): turn the square crop upright. Turning commutes
        # with the shortest-side resize and centre crop (up to a pixel of crop offset).
        out = turn_upright(out, exif_orientation(im))
        return np.asarray(out, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a property of the image
        raise ImageDecodeError(f"{type(exc).__name__}: {exc}".splitlines()[0][:500]) from None


def normalize(pixels, spec: PreprocessSpec, device=None, dtype=None):
    """uint8 (B, H, W, 3) tensor -> normalised float (B, 3, H, W), as ToTensor + Normalize do it."""
    import torch

    x = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device)[:, None, None]
    std = torch.tensor(spec.std, dtype=torch.float32, device=x.device)[:, None, None]
    x = x.sub_(mean).div_(std)
    return x if dtype is None else x.to(dtype)
