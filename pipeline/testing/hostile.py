"""A hostile pool: the dirty and malicious inputs web pools carry, for the robustness suite.

`write_hostile_pool` writes `pool.jsonl` (raw bytes, so invalid UTF-8 and JSON-escaped
lone surrogates survive to the reader), `images/` (served by a local HTTP server in the
tests) and `cases.json`, which names the case of every uid. Captions of rows meant to
travel further carry a common concept ("dog") so matching keeps them and the image-side
cases reach the download and embed stages.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass

import numpy as np

CONCEPT = "dog"


@dataclass(frozen=True)
class HostilePool:
    path: str
    images: str
    cases: dict[str, str]  # uid -> case name


def _jpeg(pixels: np.ndarray, mode: str = "RGB", **save) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").convert(mode).save(buf, format="JPEG", quality=90, **save)
    return buf.getvalue()


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def hostile_images(rng: np.random.Generator) -> dict[str, bytes]:
    """File name -> bytes for every hostile image case, plus a few good images."""
    from PIL import Image

    def pixels(size: int = 48) -> np.ndarray:
        return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)

    good = _jpeg(pixels())
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    rotated = io.BytesIO()
    Image.fromarray(pixels(40)[:, :24]).save(rotated, format="JPEG", exif=exif.tobytes())
    gif = io.BytesIO()
    frames = [Image.fromarray(pixels(32)).convert("P") for _ in range(3)]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    # More pixels than Pillow's decompression-bomb limit (2 x MAX_IMAGE_PIXELS = 179M is an
    # error, over 89M a warning) that compresses to a few hundred kilobytes.
    bomb = _png(Image.new("1", (20_000, 10_000)))
    return {
        "good_1.jpg": good,
        "good_2.jpg": _jpeg(pixels()),
        "good_3.jpg": _jpeg(pixels(64)),
        "truncated.jpg": good[: len(good) // 2],
        "zero_byte.jpg": b"",
        "not_an_image.jpg": b"<!doctype html><html><body>404 page, served as 200</body></html>",
        "bomb.png": bomb,
        "cmyk.jpg": _jpeg(pixels(), mode="CMYK"),
        "sixteen_bit.png": _png(Image.fromarray((rng.integers(0, 65535, size=(32, 32))).astype(np.uint16))),
        "animated.gif": gif.getvalue(),
        "exif_rotated.jpg": rotated.getvalue(),
        "one_pixel.png": _png(Image.new("RGB", (1, 1), (200, 10, 10))),
    }


def write_hostile_pool(out_dir: str, base_url: str, seed: int = 0) -> HostilePool:
    """Write the hostile pool under `out_dir`; image URLs point at `base_url` (which serves `out_dir/images`)."""
    rng = np.random.default_rng(seed)
    images_dir = os.path.join(out_dir, "images")
    os.makedirs(images_dir, exist_ok=True)
    for name, data in hostile_images(rng).items():
        with open(os.path.join(images_dir, name), "wb") as fh:
            fh.write(data)
    base = base_url.rstrip("/")
    host_port = base.split("://", 1)[1]
    port = host_port.rsplit(":", 1)[1] if ":" in host_port else "80"
    lines: list[bytes] = []
    cases: dict[str, str] = {}

    def row(case: str, uid: str | None, url: str | None, text: str | None = None, raw_text: bytes | None = None) -> None:
        """One JSONL line; `raw_text` is spliced in as the already-encoded JSON value of `text`."""
        fields = {"uid": uid, "url": url}
        head = json.dumps(fields, ensure_ascii=False)[:-1].encode()
        value = raw_text if raw_text is not None else json.dumps(text, ensure_ascii=False).encode()
        lines.append(head + b', "text": ' + value + b"}")
        if uid is not None:
            cases.setdefault(uid, case)

    caption = f"a photo of a {CONCEPT}"
    # Captions.
    row("null_caption", "t-null", f"{base}/good_1.jpg?n", None)
    row("empty_caption", "t-empty", f"{base}/good_1.jpg?e", "")
    row("whitespace_caption", "t-blank", f"{base}/good_1.jpg?b", " \t\n  ")
    row("zero_width_only_caption", "t-zw", f"{base}/good_1.jpg?z", "\u200b\u200c\u200d\ufeff")
    row("invalid_utf8_caption", "t-badutf8", f"{base}/good_1.jpg?u", raw_text=b'"a \xff\xfe dog"')
    row("lone_surrogate_caption", "t-surrogate", f"{base}/good_1.jpg?s", raw_text=b'"a \\ud800 dog"')
    row("megabyte_caption", "t-huge", f"{base}/good_1.jpg?h", f"{CONCEPT} " * 262_144)
    row("punctuation_only_caption", "t-punct", f"{base}/good_1.jpg?p", ",.;:?!`")
    row("rtl_caption", "t-rtl", f"{base}/good_2.jpg?r", f"\u202e{CONCEPT} \u05db\u05dc\u05d1 \u0643\u0644\u0628")
    row("zero_width_inside_word", "t-zwword", f"{base}/good_2.jpg?w", "a photo of a d\u200bog")
    row("cjk_caption", "t-cjk", f"{base}/good_2.jpg?c", f"一只可爱的小狗 {CONCEPT} 写真")
    row("control_characters", "t-ctrl", f"{base}/good_2.jpg?x", f"a\x00 \x07{CONCEPT}\x1b[31m")
    # Identity.
    row("duplicate_uid", "t-dupuid", f"{base}/good_3.jpg?d1", caption + " one")
    row("duplicate_uid", "t-dupuid", f"{base}/good_3.jpg?d2", caption + " two")
    row("duplicate_url_text", "t-dupurl-a", f"{base}/good_3.jpg?same", caption)
    row("duplicate_url_text_repeat", "t-dupurl-b", f"{base}/good_3.jpg?same", caption)
    row("missing_uid_and_url", "t-nourl", None, caption)
    # URLs the guard must refuse before any request.
    for case, url in (
        ("ftp_scheme", f"ftp://127.0.0.1:{port}/good_1.jpg"),
        ("file_scheme", "file:///etc/passwd"),
        ("javascript_scheme", "javascript:alert(1)"),
        ("data_url", "data:image/png;base64,iVBORw0KGgo="),
        ("credentials_in_url", f"http://user:secret@{host_port}/good_1.jpg"),
        ("private_ip", "http://10.11.12.13/image.jpg"),
        ("private_ip_192", "http://192.168.1.1/image.jpg"),
        ("link_local_ip", "http://169.254.10.20/image.jpg"),
        ("cloud_metadata", "http://169.254.169.254/latest/meta-data/iam/"),
        ("metadata_hostname", "http://metadata.google.internal/computeMetadata/v1/"),
        ("ipv6_loopback", f"http://[::1]:{port}/good_1.jpg"),
        ("unspecified_address", f"http://0.0.0.0:{port}/good_1.jpg"),
        ("decimal_ip_loopback", f"http://2130706433:{port}/good_1.jpg"),
        ("hostname_to_loopback", f"http://localhost:{port}/good_1.jpg"),
    ):
        row(case, f"u-{case}", url, f"{caption} ({case})")
    # Images.
    for name in ("truncated.jpg", "zero_byte.jpg", "not_an_image.jpg", "bomb.png", "cmyk.jpg",
                 "sixteen_bit.png", "animated.gif", "exif_rotated.jpg", "one_pixel.png"):
        case = name.rsplit(".", 1)[0]
        row(f"image_{case}", f"i-{case}", f"{base}/{name}", f"{caption} ({case})")
    row("http_404", "i-404", f"{base}/no_such_image.jpg", f"{caption} (404)")
    for k in range(3):
        row("good_image", f"g-{k}", f"{base}/good_{k + 1}.jpg", f"{caption} number {k}")
    path = os.path.join(out_dir, "pool.jsonl")
    with open(path, "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")
    with open(os.path.join(out_dir, "cases.json"), "w", encoding="utf-8") as fh:
        json.dump(cases, fh, indent=1, sort_keys=True)
    return HostilePool(path, images_dir, cases)
