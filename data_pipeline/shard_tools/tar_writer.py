"""Writes one shard so that its bytes depend on its samples alone, and never leaves a
partial file under the shard's name."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from ..io.digest import file_sha256

# Fixed member metadata: time, owner and mode would otherwise make two builds differ.
MEMBER_MTIME = 0
MEMBER_MODE = 0o444


def temporary_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


class ShardWriter:
    """`add(key, members)` per sample, then `commit()` renames the finished tar into place."""

    def __init__(self, final: Path):
        self.final = final
        self.temporary = temporary_path(final)
        self._file = open(self.temporary, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.GNU_FORMAT)

    def add(self, key: str, members: list[tuple[str, bytes]]) -> None:
        """Members in the given order, each named `key.extension`."""
        for extension, data in members:
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size = len(data)
            info.mtime = MEMBER_MTIME
            info.mode = MEMBER_MODE
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))

    def finish(self) -> tuple[int, str]:
        """Closes the temporary file durably; (bytes, sha256). `commit` then publishes it."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self.temporary.stat().st_size, file_sha256(self.temporary)

    def commit(self) -> None:
        os.replace(self.temporary, self.final)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.temporary.unlink(missing_ok=True)
