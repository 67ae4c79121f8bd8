"""Turns shard patterns (a corpus's `shards`, a shard tool's SPEC) into a flat, ordered list
of shard URLs.

Brace patterns (`cc3m-{000000..000331}.tar`) expand with braceexpand; then each part is a
folder (its `*.tar` files), a glob, or one shard. Local files must exist (a missing one is
the user's mistake and fails at start-up); `http(s)://`, `pipe:` and the other schemes
webdataset can open are taken as they are, since only opening them can tell. The files
img2dataset and video2dataset write beside their shards (`00000.parquet`,
`00000_stats.json`, ...) are left out when a glob catches them, with one notice.
"""
from __future__ import annotations

import glob
import logging
import os
from collections import Counter

import braceexpand
from webdataset.gopen import gopen_schemes

log = logging.getLogger(__name__)

REMOTE_SCHEMES = sorted(set(gopen_schemes) - {"__default__"} | {"http", "https"})
# Written beside shards, never shards: img2dataset / video2dataset's parquet and stats, this
# project's manifest.json and rejected.jsonl.
SIDECAR_SUFFIXES = (".parquet", ".json", ".jsonl", ".csv", ".tsv", ".txt", ".arrow", ".feather", ".log", ".md",
                    ".yaml", ".yml")


class ShardListError(ValueError):
    """Patterns that name no usable shard list; the message names the pattern."""


class ShardNotFound(ShardListError, FileNotFoundError):
    """A local shard, folder or glob that names no file."""


def is_remote(url: str) -> bool:
    return url.startswith("pipe:") or "://" in url


def brace_expand(pattern: str) -> list[str]:
    return list(braceexpand.braceexpand(pattern))


def is_sidecar(path: str) -> bool:
    return path.lower().endswith(SIDECAR_SUFFIXES)


def _check_scheme(url: str, where: str) -> None:
    if url.startswith("pipe:"):
        return
    scheme = url.split("://", 1)[0]
    if scheme not in REMOTE_SCHEMES:
        raise ShardListError(f"{where}: cannot open {url!r}: unknown scheme {scheme!r} "
                             f"(known: {', '.join(REMOTE_SCHEMES)}, pipe:)")


def _local(path: str, where: str, sidecars: list[str]) -> list[str]:
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(glob.escape(path), "*.tar")))
        if not found:
            raise ShardNotFound(f"{where}: folder {path!r} holds no *.tar shard")
        return found
    if glob.has_magic(path):
        matches = sorted(m for m in glob.glob(path) if os.path.isfile(m))
        if not matches:
            raise ShardNotFound(f"{where}: no shard matches {path!r}")
        shards = [m for m in matches if not is_sidecar(m)]
        sidecars += [m for m in matches if is_sidecar(m)]
        if not shards:
            raise ShardNotFound(f"{where}: {path!r} matches only files that are not shards, such as "
                                f"{os.path.basename(matches[0])!r}")
        return shards
    if not os.path.isfile(path):
        raise ShardNotFound(f"{where}: shard {path!r} does not exist")
    return [path]


def expand_shards(patterns: list[str], where: str = "shards") -> list[str]:
    """Every pattern expanded, in order; raises ShardListError naming the bad pattern."""
    urls: list[str] = []
    sidecars: list[str] = []
    for pattern in patterns:
        for url in brace_expand(pattern):
            if is_remote(url):
                _check_scheme(url, where)
                urls.append(url)
            else:
                urls += _local(url[len("file:"):] if url.startswith("file:") else url, where, sidecars)
    if not urls:
        raise ShardNotFound(f"{where}: the patterns {patterns!r} name no shard")
    if sidecars:
        log.warning("%s: left out %d files that are not shards (img2dataset / video2dataset sidecars, manifests), "
                    "such as %s", where, len(sidecars), os.path.basename(sidecars[0]))
    duplicates = sorted(u for u, n in Counter(urls).items() if n > 1)
    if duplicates:
        # A shard listed twice would be read twice per epoch and break exactly-once coverage.
        raise ShardListError(f"{where}: shard listed more than once: {duplicates[0]!r}")
    return urls
