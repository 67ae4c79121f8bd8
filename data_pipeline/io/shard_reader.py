"""The one shard reader: opens a shard URL, reads its tar members and groups them into raw
samples (`__key__`, `__url__`, and each member's bytes under its extension).

Nothing is decoded here, so skipping to a position after a resume costs reading, not
decoding. Entry points:
  * `raw_samples`: every sample, and an exception from `READ_ERRORS` when the shard is
    damaged or cannot be read; `checked_samples` (the shard tools) also refuses a shard
    whose members the loader would pass over;
  * `read_shard` (the loader, evaluation): the retry policy; it never raises for a bad
    shard, it counts it. Only a failure of the stream itself (network, pipe, disk, a
    stream cut short) is retried; a file that is not a tar or a damaged one is skipped at
    once (`shard_not_tar`, `shard_corrupt`), since reading it again gives the same bytes.
"""
from __future__ import annotations

import http.client
import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from typing import Iterator

from webdataset.gopen import Pipe, gopen

from ..skips import Counters
from .sample_grouping import group_samples
from .tar_stream import DEFAULT_MAX_MEMBER_BYTES, NotATarError, SkipReport, TarFormatError, ignore_skips, tar_members

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 60.0
# The most a shard may take to read, open to close (loader.shard_read_timeout_s).
DEFAULT_READ_TIMEOUT_S = 300.0
# What reading a shard may raise: a damaged or foreign file (TarFormatError), a stream cut
# short (EOFError), a failed open or read (OSError, which includes urllib's URLError).
READ_ERRORS = (TarFormatError, EOFError, OSError, http.client.HTTPException)
COUNT_NOTHING = sys.maxsize  # `count_from` that leaves member skips uncounted


def open_shard(url: str):
    """A readable byte stream for a local path, `file:`, `pipe:` or `http(s)://` URL.

    http(s) goes through urllib rather than webdataset's curl pipe, whose own 30 retries
    would hide a dead server from the retry policy configured here."""
    if url.startswith(("http://", "https://")):
        return urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S)
    if url.startswith("file:"):
        url = url[len("file:"):]
    if url.startswith("pipe:"):
        # webdataset's pipe, started in a session of its own: the deadline ends the shell and
        # every process it started (`cat X; sleep N` leaves `sleep` holding the pipe open).
        # ignore_errors: webdataset would raise on the first read after the command ended,
        # throwing away the bytes that read returned (the whole of a small shard); the exit
        # status is checked at the close instead (`_check_exit`), after every sample is out.
        return Pipe(url[len("pipe:"):], mode="rb", shell=True, bufsize=8192, ignore_status=[141],
                    ignore_errors=True, start_new_session=True)
    return gopen(url, "rb")


class ShardTimeout(OSError):
    """The shard was not read, open to close, within its bound (`shard_timeout`)."""


class _Deadline:
    """A wall-clock bound on reading one shard, open to close. Every read checks it, so that a
    stream that trickles (a byte every few seconds) or a compressed member that inflates for
    hours ends at it; a timer ends what a read or the close can wait on forever at the bound: a
    `pipe:` command that sends nothing (killed; webdataset's close would wait two hours for it,
    even after a whole tar) and an HTTP socket (shut down)."""

    def __init__(self, stream, seconds: float):
        self.stream, self.seconds = stream, seconds
        self.expires = time.monotonic() + seconds
        self.timer = threading.Timer(seconds, self._end_stream)
        self.timer.daemon = True
        self.timer.start()

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.expires

    def error(self) -> ShardTimeout:
        return ShardTimeout(f"not read within loader.shard_read_timeout_s = {self.seconds:g} s")

    def read(self, size: int = -1) -> bytes:
        if self.expired:
            raise self.error()
        return self.stream.read(size)

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            self.timer.cancel()

    def _end_stream(self) -> None:
        try:
            process = getattr(self.stream, "proc", None)  # webdataset's Pipe, in its own session
            if process is not None:
                os.killpg(process.pid, signal.SIGKILL)
                return
            raw = getattr(getattr(self.stream, "fp", None), "raw", None)  # urllib's response
            sock = getattr(raw, "_sock", None)
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone


class PipeFailed(OSError):
    """A `pipe:` command that exited with an error status (after its output was read)."""


def _check_exit(stream) -> None:
    process = getattr(getattr(stream, "stream", stream), "proc", None)  # a Pipe, perhaps under a _Deadline
    if process is not None and process.returncode not in (0, 141, None):  # 141: SIGPIPE, the reader left early
        raise PipeFailed(f"the pipe command exited with status {process.returncode}")


def raw_samples(url: str, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
                on_skip: SkipReport = ignore_skips, timeout_s: float | None = DEFAULT_READ_TIMEOUT_S
                ) -> Iterator[dict]:
    """Every sample of the shard in stored order. Members passed over (too large, repeated,
    unnamed, of an unknown type) go to `on_skip`; a bad shard raises one of READ_ERRORS, and
    one not read within TIMEOUT_S (None: no bound) ShardTimeout."""
    stream = open_shard(url)
    if timeout_s:
        stream = _Deadline(stream, timeout_s)
    finished = False
    try:
        yield from group_samples(tar_members(stream, max_member_bytes, on_skip), url, on_skip)
        finished = True
    except READ_ERRORS as exn:
        if isinstance(stream, _Deadline) and stream.expired:
            raise stream.error() from exn
        raise
    finally:
        if finished:
            try:
                stream.close()
                _check_exit(stream)  # a pipe reports its command's failure here
            except READ_ERRORS:
                if isinstance(stream, _Deadline) and stream.expired:
                    raise stream.error() from None
                raise
        else:  # an error is already on its way, or the caller stopped early
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass


def _cut_short_file(error: BaseException, url: str | None) -> bool:
    """A local file that ends where its headers say more follows: its bytes are damaged (a
    network or a pipe may cut a stream short; a file read again ends at the same place)."""
    return (isinstance(error, EOFError) and url is not None
            and not url.startswith(("pipe:", "http://", "https://")))


def failure_reason(error: BaseException, url: str | None = None) -> str:
    """The counter a shard (URL) that raised `error` is skipped under."""
    if isinstance(error, ShardTimeout):
        return "shard_timeout"
    if isinstance(error, NotATarError):
        return "shard_not_tar"
    if isinstance(error, TarFormatError) or _cut_short_file(error, url):
        return "shard_corrupt"
    return "shard_unreadable"


def is_transient(error: BaseException, url: str | None = None) -> bool:
    """Worth reading again: the stream failed, not its bytes (nor its time: a shard that took
    its whole bound is not read again)."""
    return not isinstance(error, (TarFormatError, ShardTimeout)) and not _cut_short_file(error, url)


def read_shard(url: str, start: int, counters: Counters, retries: int = 2, retry_delay_s: float = 1.0,
               max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES, count_from: int | None = None,
               timeout_s: float | None = DEFAULT_READ_TIMEOUT_S) -> Iterator[tuple[int, dict]]:
    """Yields (index in shard, raw sample) for index >= start; never raises for a bad shard.

    A transient failure reopens the shard and skips to the first sample not yet yielded, up
    to `retries` times; then the rest of the shard is skipped (`shard_unreadable`). A shard not
    read within TIMEOUT_S is skipped at once (`shard_timeout`), the samples read before kept. Members
    passed over are counted once, for the samples from `count_from` (default `start`) on,
    however often the shard is reread: they belong to the sample being assembled."""
    next_index = start
    counted = start if count_from is None else count_from  # member skips before this sample are counted
    failures = 0
    while True:
        seen = [0]  # samples grouped so far in this attempt: the sample a skip belongs to
        pending: list[tuple[int, str]] = []

        def on_skip(reason: str, detail: str) -> None:
            pending.append((seen[0], reason))
            log.debug("shard %s: passed over a member (%s): %s", url, reason, detail)

        def commit(through: int) -> None:
            nonlocal counted
            for owner, reason in pending:
                if counted <= owner <= through:
                    counters.add(reason)
            pending.clear()
            counted = max(counted, through + 1)

        try:
            for index, sample in enumerate(raw_samples(url, max_member_bytes, on_skip, timeout_s)):
                seen[0] = index + 1
                commit(index)
                if index >= next_index:
                    next_index = index + 1
                    yield index, sample
            commit(COUNT_NOTHING - 1)
            return
        except READ_ERRORS as exn:
            failures += 1
            if not is_transient(exn, url) or failures > retries:
                commit(COUNT_NOTHING - 1)
                reason = failure_reason(exn, url)
                counters.add(reason)
                after = f" after {failures} attempts" if is_transient(exn, url) else ""
                log.warning("skipping %s %s%s (%s: %s)", "the rest of shard" if next_index else "shard", url, after,
                            reason, exn)
                return
            counters.add("shard_retry")
            log.info("retrying shard %s (attempt %d): %s: %s", url, failures + 1, type(exn).__name__, exn)
            if retry_delay_s:
                time.sleep(retry_delay_s)


class ShardDamaged(Exception):
    """A shard the shard tools refuse: `reason` is the loader's counter for it."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _refuse(reason: str, detail: str) -> None:
    raise ShardDamaged(reason, detail)


def checked_samples(url: str, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
                    timeout_s: float | None = DEFAULT_READ_TIMEOUT_S) -> Iterator[dict]:
    """`raw_samples` for the shard tools, which report a shard rather than read around its
    damage: anything the loader would skip or count raises ShardDamaged."""
    try:
        yield from raw_samples(url, max_member_bytes, _refuse, timeout_s)
    except READ_ERRORS as exn:
        raise ShardDamaged(failure_reason(exn, url), f"{type(exn).__name__}: {exn}") from None
