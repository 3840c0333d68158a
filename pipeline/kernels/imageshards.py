"""Reading images by shard: img2dataset output (WebDataset tars or Parquet with image bytes) and image folders.

Spark-free and torch-free: the embed stage's workers call `read_unit` on a unit of a shard
(`shard_units`). Every sample that is found comes back (with `data=None` and a note when it has no
image bytes), so the stage can account for each one.
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from pipeline.core.errors import UserError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
# Parquet columns that may hold image bytes (img2dataset writes `jpg`; fondant `data`).
IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "image", "img", "image_bytes", "bytes", "data")
UID_COLUMNS = ("uid", "key", "id")
TEXT_COLUMNS = ("caption", "text", "txt", "alt_text")
SIDECARS = (".txt", ".json")


class ImageInputError(UserError):
    """The embed input is not a run folder, an img2dataset output or a folder of images."""


@dataclass(frozen=True)
class Shard:
    """One unit of work and of output: an input file (tar, parquet) or a group of image files."""

    name: str  # the output file is <name>.parquet
    kind: str  # "tar" | "parquet" | "files"
    path: str  # the input file, or the folder of the files
    files: tuple[str, ...] = field(default=())

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Shard:
        d = json.loads(text)
        return cls(d["name"], d["kind"], d["path"], tuple(d["files"]))


@dataclass
class Sample:
    uid: str
    key: str
    text: str | None
    data: bytes | None
    note: str | None = None  # why there are no bytes, when there are none


def _fs(path: str):
    """(pyarrow filesystem, path inside it): local paths as they are, URIs (hdfs://, s3://) by scheme."""
    from pyarrow import fs as pafs

    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _join(base: str, name: str) -> str:
    return posixpath.join(base, name) if "://" in base else os.path.join(base, name)


def list_files(folder: str, recursive: bool = False) -> list[str]:
    """Plain files under `folder` (relative paths, sorted); hidden and `_`-prefixed names are skipped."""
    from pyarrow import fs as pafs

    fs, root = _fs(folder)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=recursive, allow_not_found=True))
    out = []
    for info in infos:
        rel = posixpath.relpath(info.path, root)
        if info.type == pafs.FileType.File and not any(p.startswith((".", "_")) for p in rel.split("/")):
            out.append(rel)
    return sorted(out)


def exists(path: str) -> bool:
    from pyarrow import fs as pafs

    fs, p = _fs(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def discover_shards(folder: str, images_per_shard: int = 10000) -> tuple[str, list[Shard]]:
    """The shards of an img2dataset output folder or an image folder: (layout, shards).

    Tars win over Parquet (img2dataset writes a metadata Parquet beside each tar); Parquet files
    count only with an image-bytes column; otherwise every non-sidecar file is an image.
    """
    if not exists(folder):
        raise ImageInputError(f"embed: input not found: {folder}")
    files = list_files(folder)
    tars = [f for f in files if f.endswith(".tar")]
    if tars:
        return "webdataset", [Shard(_stem(f), "tar", _join(folder, f)) for f in tars]
    parquets = [f for f in files if f.endswith(".parquet")]
    if parquets:
        import pyarrow.parquet as pq

        shards = []
        for f in parquets:
            path = _join(folder, f)
            fs, p = _fs(path)
            with fs.open_input_file(p) as fh:
                names = pq.ParquetFile(fh).schema_arrow.names
            if _pick(names, IMAGE_COLUMNS) is None:
                raise ImageInputError(
                    f"embed: {path} has no image-bytes column (one of {', '.join(IMAGE_COLUMNS)}); columns: {', '.join(names)}"
                )
            shards.append(Shard(_stem(f), "parquet", path))
        return "parquet", shards
    images = [f for f in list_files(folder, recursive=True) if not f.lower().endswith(SIDECARS)]
    if not images:
        raise ImageInputError(f"embed: {folder} holds no tar, Parquet or image files")
    groups = [images[i : i + images_per_shard] for i in range(0, len(images), images_per_shard)]
    return "files", [Shard(f"images-{i:05d}", "files", folder, tuple(g)) for i, g in enumerate(groups)]


def _stem(rel: str) -> str:
    # 00000.tar -> 00000; nested folders keep their path so names stay unique.
    return rel.rsplit(".", 1)[0].replace("/", "__")


def _pick(names, candidates) -> str | None:
    lower = {n.lower(): n for n in names}
    return next((lower[c] for c in candidates if c in lower), None)


# --------------------------------------------------------------------------- per-shard reading


@dataclass
class _TarIndex:
    samples: list[tuple[str, dict[str, tuple[int, int]]]]  # (key, {ext: (offset, size)})
    error: str | None


@lru_cache(maxsize=4)
def _tar_index(path: str) -> _TarIndex:
    """Members grouped by sample key (the basename up to its first dot, as WebDataset does).

    A truncated or corrupt tar keeps the samples read before the damage, with the error noted.
    """
    order: list[str] = []
    members: dict[str, dict[str, tuple[int, int]]] = {}
    error = None
    fs, p = _fs(path)
    try:
        with fs.open_input_file(p) as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                base = posixpath.basename(m.name)
                if base.startswith((".", "_")) or "." not in base:
                    continue
                dirname = posixpath.dirname(m.name)
                stem, ext = base.split(".", 1)
                key = posixpath.join(dirname, stem) if dirname else stem
                if key not in members:
                    members[key] = {}
                    order.append(key)
                members[key][ext.lower()] = (m.offset_data, m.size)
    except (tarfile.TarError, OSError, EOFError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    return _TarIndex([(k, members[k]) for k in order], error)


@lru_cache(maxsize=2)
def _parquet_columns(path: str) -> tuple[str, str | None, str | None, str | None, str | None]:
    import pyarrow.parquet as pq

    fs, p = _fs(path)
    with fs.open_input_file(p) as fh:
        names = pq.ParquetFile(fh).schema_arrow.names
    return (
        _pick(names, IMAGE_COLUMNS),
        _pick(names, ("uid",)),
        _pick(names, ("key", "id")),
        _pick(names, TEXT_COLUMNS),
        _pick(names, ("error_message",)),
    )


def shard_units(shard: Shard, batch_size: int) -> tuple[list[tuple[int, int]], str | None]:
    """The shard's units of work as [start, stop) sample ranges, and a read error (or None).

    Tars and file groups are read by offset, so a unit is one batch. A Parquet unit is a row
    group (read once, streamed in batches): slicing rows out of a row group would read the
    whole group for every batch.
    """
    if shard.kind == "parquet":
        import pyarrow.parquet as pq

        fs, p = _fs(shard.path)
        with fs.open_input_file(p) as fh:
            meta = pq.ParquetFile(fh).metadata
        units, row = [], 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if n:
                units.append((row, row + n))
            row += n
        return units, None
    if shard.kind == "tar":
        index = _tar_index(shard.path)
        n, error = len(index.samples), index.error
    else:
        n, error = len(shard.files), None
    return [(i, min(n, i + batch_size)) for i in range(0, n, batch_size)], error


def read_unit(shard: Shard, start: int, stop: int, batch_size: int) -> Iterator[list[Sample]]:
    """The samples of one unit from `shard_units`, in shard order, in lists of at most batch_size."""
    if shard.kind == "parquet":
        yield from _read_parquet(shard.path, start, stop, batch_size)
    elif shard.kind == "tar":
        yield _read_tar(shard.path, start, stop)
    else:
        yield _read_files(shard.path, shard.files[start:stop])


def source_identity(shard: Shard) -> list:
    """What identifies the input bytes of a shard: file size and modification time (files: each one's)."""
    fs, _ = _fs(shard.path)
    paths = [shard.path] if shard.kind != "files" else [_join(shard.path, f) for f in shard.files]
    infos = fs.get_file_info([_fs(x)[1] for x in paths])
    return [[i.size, i.mtime_ns] for i in infos] if shard.kind != "files" else [[f, i.size, i.mtime_ns] for f, i in zip(shard.files, infos, strict=True)]


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace").strip()
    return text or None


def _read_tar(path: str, start: int, stop: int) -> list[Sample]:
    index = _tar_index(path)
    fs, p = _fs(path)
    out = []
    with fs.open_input_file(p) as fh:

        def read(span: tuple[int, int] | None) -> bytes | None:
            if span is None:
                return None
            fh.seek(span[0])
            return fh.read(span[1])

        for key, members in index.samples[start:stop]:
            meta: dict = {}
            if "json" in members:
                try:
                    loaded = json.loads(read(members["json"]) or b"{}")
                    meta = loaded if isinstance(loaded, dict) else {}
                except ValueError:
                    meta = {}
            ext = next((e for e in IMAGE_EXTS if e in members), None)
            text = _text(read(members.get("txt"))) if "txt" in members else None
            if text is None:
                text = next((str(meta[c]) for c in TEXT_COLUMNS if meta.get(c)), None)
            uid = str(meta["uid"]) if meta.get("uid") not in (None, "") else key
            data = read(members[ext]) if ext else None
            note = None if ext else f"no image member for key {key} in {posixpath.basename(path)}"
            out.append(Sample(uid, key, text, data, note))
    return out


def _read_parquet(path: str, start: int, stop: int, batch_size: int) -> Iterator[list[Sample]]:
    import pyarrow.parquet as pq

    image_col, uid_col, key_col, text_col, err_col = _parquet_columns(path)
    cols = [c for c in (image_col, uid_col, key_col, text_col, err_col) if c]
    fs, p = _fs(path)
    with fs.open_input_file(p) as fh:
        pf = pq.ParquetFile(fh)
        groups, row = [], 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if row >= start and row + n <= stop and n:
                groups.append(g)
            row += n
        row = start
        for batch in pf.iter_batches(batch_size=batch_size, row_groups=groups, columns=cols):
            d = batch.to_pydict()
            out = []
            for i in range(batch.num_rows):
                key = str(d[key_col][i]) if key_col and d[key_col][i] is not None else str(row + i)
                uid = str(d[uid_col][i]) if uid_col and d[uid_col][i] not in (None, "") else key
                data = d[image_col][i]
                text = d[text_col][i] if text_col else None
                text = (str(text).strip() or None) if text is not None else None
                note = None
                if data is None:
                    error = d[err_col][i] if err_col else None
                    note = f"no image bytes in {posixpath.basename(path)}" + (f" (download error: {error})" if error else "")
                out.append(Sample(uid, key, text, data, note))
            row += batch.num_rows
            yield out


def _read_files(folder: str, rels: tuple[str, ...]) -> list[Sample]:
    fs, root = _fs(folder)
    out = []
    for rel in rels:
        path = posixpath.join(root, rel)
        stem = posixpath.basename(rel).rsplit(".", 1)[0]
        with fs.open_input_file(path) as fh:
            data = fh.read()
        text = None
        sidecar = posixpath.join(posixpath.dirname(path), stem + ".txt")
        try:
            with fs.open_input_file(sidecar) as fh:
                text = _text(fh.read())
        except (FileNotFoundError, OSError):
            text = None
        out.append(Sample(stem, rel, text, data))
    return out
