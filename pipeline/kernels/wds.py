"""WebDataset shards, Spark-free: image bytes read back from img2dataset's shards, and tars written
byte for byte the same on every run (fixed member order, times, owners and modes)."""

from __future__ import annotations

import io
import json
import tarfile
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pipeline.core.errors import UserError
from pipeline.kernels.imageshards import _fs


class MissingImageError(UserError):
    """A kept sample whose image bytes are not where the download stage said they are."""


@dataclass(frozen=True)
class Sample:
    key: str  # the member name stem inside the exported tar
    image: bytes
    ext: str  # jpg, png, webp
    text: str | None
    meta: dict[str, Any]


class ImageReader:
    """Image bytes by (download shard file, img2dataset key), a few shards open at a time.

    WebDataset shards are indexed once (member offsets) and read by seeking; Parquet shards
    (img2dataset's parquet output) are read as one table of key -> bytes.
    """

    def __init__(self, shards_dir: str, ext: str, keep_open: int = 8) -> None:
        self.shards_dir = shards_dir.rstrip("/")
        self.ext = ext
        self.keep_open = keep_open
        self._open: OrderedDict[str, Any] = OrderedDict()

    def _shard(self, name: str):
        if name in self._open:
            self._open.move_to_end(name)
            return self._open[name]
        fs, path = _fs(f"{self.shards_dir}/{name}")
        try:
            if name.endswith(".tar"):
                handle = fs.open_input_file(path)
                tar = tarfile.open(fileobj=handle, mode="r:")
                index = {m.name: m for m in tar.getmembers() if m.isfile()}
                entry: Any = (handle, tar, index)
            else:
                import pyarrow.parquet as pq

                with fs.open_input_file(path) as fh:
                    table = pq.read_table(fh, columns=["key", self.ext])
                entry = dict(zip(table.column("key").to_pylist(), table.column(self.ext).to_pylist(), strict=True))
        except (FileNotFoundError, OSError, tarfile.TarError) as exc:
            raise MissingImageError(f"export: cannot read the download shard {self.shards_dir}/{name}: {exc}") from None
        self._open[name] = entry
        while len(self._open) > self.keep_open:
            self.close_one()
        return entry

    def read(self, shard: str, key: str) -> bytes:
        entry = self._shard(shard)
        if isinstance(entry, dict):
            data = entry.get(key)
        else:
            _, tar, index = entry
            member = index.get(f"{key}.{self.ext}")
            data = tar.extractfile(member).read() if member is not None else None
        if data is None:
            raise MissingImageError(f"export: no image {key}.{self.ext} in the download shard {self.shards_dir}/{shard}")
        return data

    def close_one(self) -> None:
        _, entry = self._open.popitem(last=False)
        if not isinstance(entry, dict):
            entry[1].close()
            entry[0].close()

    def close(self) -> None:
        while self._open:
            self.close_one()


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def write_tar(path: str, samples: Iterable[Sample]) -> tuple[int, int]:
    """Write `samples` in the order given as `<key>.<ext>`, `<key>.txt`, `<key>.json`; (samples, bytes)."""
    fs, target = _fs(path)
    n = 0
    with fs.open_output_stream(target) as out, tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            tar.addfile(*_member(f"{s.key}.{s.ext}", s.image))
            tar.addfile(*_member(f"{s.key}.txt", (s.text or "").encode("utf-8")))
            meta = json.dumps(s.meta, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
            tar.addfile(*_member(f"{s.key}.json", meta))
            n += 1
    size = fs.get_file_info(target).size
    return n, int(size)
