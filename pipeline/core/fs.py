"""File operations on the run folder through Hadoop's FileSystem, so local, HDFS and S3 paths all work."""

from __future__ import annotations

import json
import uuid
from typing import Any

# Filesystems whose objects appear whole when closed (no rename needed for a small atomic write).
OBJECT_STORES = ("s3", "s3a", "s3n", "gs", "abfs", "abfss", "wasb", "wasbs", "oss", "cos", "cosn")


class RunFS:
    """Thin wrapper over `org.apache.hadoop.fs.FileSystem` for the driver's bookkeeping files."""

    def __init__(self, spark) -> None:
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _path(self, path: str):
        return self._jvm.org.apache.hadoop.fs.Path(path)

    def _fs(self, path: str):
        return self._path(path).getFileSystem(self._conf)

    def qualify(self, path: str) -> str:
        """The fully qualified form (scheme included) of `path`."""
        p = self._path(path)
        return str(p.getFileSystem(self._conf).makeQualified(p).toString())

    def exists(self, path: str) -> bool:
        return bool(self._fs(path).exists(self._path(path)))

    def delete(self, path: str) -> None:
        if self.exists(path):
            self._fs(path).delete(self._path(path), True)

    def mkdirs(self, path: str) -> None:
        self._fs(path).mkdirs(self._path(path))

    def is_dir(self, path: str) -> bool:
        return bool(self._fs(path).isDirectory(self._path(path)))

    def replace_file(self, src: str, dst: str) -> None:
        """Rename one small file over `dst`. Folders are never renamed: on S3 or GCS that copies every object."""
        if self.is_dir(src):
            raise OSError(f"refusing to rename the folder {src}: outputs are written in place")
        fs = self._fs(dst)
        if fs.exists(self._path(dst)):
            fs.delete(self._path(dst), False)
        if not fs.rename(self._path(src), self._path(dst)):
            raise OSError(f"could not rename {src} to {dst}")

    def list(self, path: str) -> list[str]:
        if not self.exists(path):
            return []
        return sorted(str(s.getPath().getName()) for s in self._fs(path).listStatus(self._path(path)))

    def write_bytes(self, path: str, data: bytes) -> None:
        out = self._fs(path).create(self._path(path), True)
        try:
            out.write(bytearray(data))
        finally:
            out.close()

    def read_bytes(self, path: str) -> bytes:
        fs = self._fs(path)
        p = self._path(path)
        length = int(fs.getFileStatus(p).getLen())
        stream = fs.open(p)
        try:
            buf = self._jvm.java.io.ByteArrayOutputStream()
            self._jvm.org.apache.hadoop.io.IOUtils.copyBytes(stream, buf, 65536, False)
            data = bytes(buf.toByteArray())
        finally:
            stream.close()
        if len(data) != length:
            raise OSError(f"short read of {path}: {len(data)} of {length} bytes")
        return data

    def write_json(self, path: str, obj: Any) -> None:
        # Long lists (an entry list of 500k strings) are written compactly; the rest for people.
        indent = None if isinstance(obj, list) and len(obj) > 1000 else 2
        self.write_bytes(path, (json.dumps(obj, indent=indent, sort_keys=True, default=str, ensure_ascii=False) + "\n").encode())

    def write_small_json(self, path: str, obj: Any) -> None:
        """A marker or other small JSON that must never be seen half-written.

        Object stores (s3a, gs) make an object visible only once it is closed, so it is written
        in place; elsewhere it is written beside and renamed over (one small file).
        """
        if self._path(path).toUri().getScheme() in OBJECT_STORES:
            self.write_json(path, obj)
            return
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        self.write_json(tmp, obj)
        self.replace_file(tmp, path)

    def read_json(self, path: str) -> Any:
        return json.loads(self.read_bytes(path).decode("utf-8"))
