"""Tar members grouped into samples, the WebDataset convention: consecutive members whose
names share a key make one sample.

The key of `dir/000000042.caption.txt` is `dir/000000042` (the name up to the first dot of
its basename) and its extension `caption.txt`, lowercased so that `.JPG` and `.jpg` are one
member. A member that repeats an extension within its sample, or that has no key or no
extension, is passed over and reported to `on_skip`; the samples around it are unharmed
(webdataset's `group_by_keys` raises instead, losing the rest of the shard).
"""
from __future__ import annotations

from typing import Iterable, Iterator

from .tar_stream import SkipReport, ignore_skips


def split_name(name: str) -> tuple[str, str] | None:
    """(key, lowercased extension) of a member name, or None when it has no key or extension."""
    folder, slash, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not stem or not dot or not extension:
        return None
    return folder + slash + stem, extension.lower()


def group_samples(members: Iterable[tuple[str, bytes]], url: str, on_skip: SkipReport = ignore_skips) -> Iterator[dict]:
    """`{"__key__", "__url__", extension: bytes, ...}` per sample, in stored order."""
    sample: dict | None = None
    for name, data in members:
        parts = split_name(name)
        if parts is None:
            on_skip("member_unnamed", f"{name!r}: no key.extension name")
            continue
        key, extension = parts
        if sample is None or sample["__key__"] != key:
            if sample is not None:
                yield sample
            sample = {"__key__": key, "__url__": url}
        if extension in sample:
            on_skip("member_duplicate", f"{name!r}: a second {extension!r} member for key {key!r}")
            continue
        sample[extension] = data
    if sample is not None:
        yield sample
