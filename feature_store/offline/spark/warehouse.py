"""The few file operations the Spark engine's offline tiles need under ``warehouse``: a local folder (plain Python,
atomic renames), or any URI Spark's Hadoop layer reaches (its FileSystem API through the session's JVM)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class Warehouse:
    def __init__(self, root: str, spark: Callable[[], SparkSession]) -> None:
        """``spark`` gives the session, asked for only by a URI's operations (a local teardown starts no JVM)."""
        self.root, self._session = root.rstrip("/"), spark
        self.remote = "://" in root and not root.startswith("file://")

    @property
    def _spark(self) -> SparkSession:
        return self._session()

    def join(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _fs(self, path: str) -> tuple[Any, Any]:
        jvm: Any = self._spark._jvm
        hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
        jsc: Any = self._spark._jsc
        return hadoop_path.getFileSystem(jsc.hadoopConfiguration()), hadoop_path

    def _local(self, path: str) -> Path:
        return Path(path.removeprefix("file://"))

    def list(self, path: str) -> list[str]:
        """The names in a folder (none when it does not exist)."""
        if not self.remote:
            folder = self._local(path)
            return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        fs, hpath = self._fs(path)
        if not fs.exists(hpath):
            return []
        return sorted(str(status.getPath().getName()) for status in fs.listStatus(hpath))

    def read_text(self, path: str) -> str | None:
        if not self.remote:
            try:
                return self._local(path).read_text()
            except FileNotFoundError:
                return None
        fs, hpath = self._fs(path)
        if not fs.exists(hpath):
            return None
        stream = fs.open(hpath)
        try:
            jvm: Any = self._spark._jvm
            return str(jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))
        finally:
            stream.close()

    def create_text(self, path: str, text: str) -> None:
        """Write a new file whole or not at all: a temporary file renamed to ``path``, which must not exist."""
        folder, name = path.rsplit("/", 1)
        temporary = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
        if not self.remote:
            local, target = self._local(temporary), self._local(path)
            local.parent.mkdir(parents=True, exist_ok=True)
            with open(local, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            if target.exists():
                local.unlink()
                raise FileExistsError(path)
            os.replace(local, target)  # atomic: readers see the whole file or none
            return
        fs, hpath = self._fs(temporary)
        stream = fs.create(hpath, False)
        try:
            stream.write(bytearray(text.encode()))
        finally:
            stream.close()
        _, target = self._fs(path)
        if not fs.rename(hpath, target):  # HDFS renames atomically and never over an existing file
            fs.delete(hpath, False)
            raise FileExistsError(path)

    def delete(self, path: str) -> None:
        """Remove a file or a folder with everything in it; nothing when it is not there."""
        if not self.remote:
            local = self._local(path)
            if local.is_dir():
                shutil.rmtree(local, ignore_errors=True)
            else:
                local.unlink(missing_ok=True)
            return
        fs, hpath = self._fs(path)
        fs.delete(hpath, True)
