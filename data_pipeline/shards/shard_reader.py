"""Finding shards from a SPEC and reading their samples back, for inspect / verify / show."""
from __future__ import annotations

import glob
import tarfile
from pathlib import Path
from typing import Iterator

from braceexpand import braceexpand

MEDIA_EXTENSIONS = ("jpg", "png", "webp", "mp4")


class SpecError(Exception):
    """A SPEC that names no readable shard."""


def expand_spec(spec: str) -> list[Path]:
    """Shard paths of SPEC: brace patterns expanded, then each part a directory (its *.tar),
    a glob, or a shard path."""
    paths = []
    for pattern in braceexpand(spec):
        if Path(pattern).is_dir():
            found = sorted(Path(pattern).glob("*.tar"))
            if not found:
                raise SpecError(f"no *.tar shards in directory {pattern}")
            paths += found
        elif glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise SpecError(f"no shard matches {pattern}")
            paths += [Path(m) for m in matches]
        elif not Path(pattern).is_file():
            raise SpecError(f"shard not found: {pattern}")
        else:
            paths.append(Path(pattern))
    return paths


def iter_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample, grouped as webdataset groups them: by the member
    name before its first dot, consecutive members together."""
    key, members = None, {}
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            stem, _, extension = info.name.partition(".")
            if stem != key and key is not None:
                yield key, members
                members = {}
            key = stem
            members[extension] = tar.extractfile(info).read()
    if key is not None:
        yield key, members


def media_member(members: dict[str, bytes]) -> tuple[str, bytes] | None:
    for extension in MEDIA_EXTENSIONS:
        if extension in members:
            return extension, members[extension]
    return None
