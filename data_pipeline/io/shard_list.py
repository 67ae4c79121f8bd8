"""Turns the `shards` entries of a corpus into a flat, ordered list of shard URLs.

Brace patterns (`cc3m-{000000..000331}.tar`) expand with braceexpand; local files must
exist (a missing one is the user's mistake and fails at start-up); `http(s)://` and
`pipe:` URLs are taken as they are, since only opening them can tell.
"""
from __future__ import annotations

import glob
import os
from collections import Counter

import braceexpand


def is_remote(url: str) -> bool:
    return url.startswith(("http://", "https://", "pipe:")) or "://" in url


def expand_shards(patterns: list[str], where: str = "shards") -> list[str]:
    """Expands every pattern in order. Local paths may also use glob wildcards."""
    urls: list[str] = []
    for pattern in patterns:
        for url in braceexpand.braceexpand(pattern):
            if is_remote(url):
                urls.append(url)
                continue
            path = url[len("file:"):] if url.startswith("file:") else url
            if any(ch in path for ch in "*?["):
                matches = sorted(glob.glob(path))
                if not matches:
                    raise FileNotFoundError(f"{where}: no file matches {path!r}")
                urls.extend(matches)
            elif not os.path.isfile(path):
                raise FileNotFoundError(f"{where}: shard {path!r} does not exist")
            else:
                urls.append(path)
    if not urls:
        raise FileNotFoundError(f"{where}: the patterns {patterns!r} name no shard")
    duplicates = sorted(u for u, n in Counter(urls).items() if n > 1)
    if duplicates:
        # A shard listed twice would be read twice per epoch and break exactly-once coverage.
        raise ValueError(f"{where}: shard listed more than once: {duplicates[0]!r}")
    return urls
