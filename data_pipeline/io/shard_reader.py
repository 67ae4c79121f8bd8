"""Reads the raw samples of one tar shard, from a given sample index on, with retries.

A sample is webdataset's grouping of the tar members that share a key (`__key__`,
`jpg`, `json`, ...), still as bytes: nothing is decoded here, so skipping to a position
after a resume costs reading, not decoding.
"""
from __future__ import annotations

import logging
import tarfile
import time
import urllib.error
import urllib.request
from typing import Iterator

from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys

from ..skips import Counters
from .tar_stream import tar_members

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 60.0


def open_shard(url: str):
    """A readable byte stream for a local path, `file:`, `pipe:` or `http(s)://` URL.

    http(s) goes through urllib rather than webdataset's curl pipe, whose own 30 retries
    would hide a dead server from the retry policy configured here."""
    if url.startswith(("http://", "https://")):
        return urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S)
    return gopen(url, "rb")


def raw_samples(url: str) -> Iterator[dict]:
    """Every sample of the shard in stored order; errors propagate."""
    stream = open_shard(url)
    try:
        files = ({"fname": name, "data": data, "__url__": url} for name, data in tar_members(stream))
        yield from group_by_keys(files)
    finally:
        stream.close()


def read_shard(url: str, start: int, counters: Counters, retries: int = 2, retry_delay_s: float = 1.0,
               ) -> Iterator[tuple[int, dict]]:
    """Yields (index in shard, raw sample) for index >= start.

    A failure to open or read reopens the shard and skips to the first sample not yet
    yielded, up to `retries` times; then the rest of the shard is skipped and counted."""
    next_index = start
    failures = 0
    while True:
        try:
            for index, sample in enumerate(raw_samples(url)):
                if index >= next_index:
                    next_index = index + 1
                    yield index, sample
            return
        except (OSError, EOFError, tarfile.TarError, ValueError, urllib.error.URLError) as exn:
            failures += 1
            if failures > retries:
                counters.add("shard_unreadable")
                log.warning("skipping the rest of shard %s after %d attempts: %s", url, failures, exn)
                return
            counters.add("shard_retry")
            log.info("retrying shard %s (attempt %d): %s", url, failures + 1, exn)
            if retry_delay_s:
                time.sleep(retry_delay_s)
