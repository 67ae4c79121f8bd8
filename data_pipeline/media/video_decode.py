"""MP4 decoding with decord under a time limit.

decord can spin forever inside native code on a file that over-reports its frame count
(dmlc/decord issue 373); no Python-level timeout can interrupt that. So clips are decoded
in a child process that lives as long as its parent, taking one clip at a time through a
pipe; the parent waits at most `timeout_s` for the frames and kills the child if it is
late, and starts a fresh child for the next clip. A bad file costs one skipped sample and
one restart, never a hung worker. (os.fork rather than multiprocessing: DataLoader
workers are daemonic and may not start multiprocessing children.)
"""
from __future__ import annotations

import io
import os
import random
import select
import signal
import struct
import time

import numpy as np

from ..skips import BadSample

_HEADER = struct.Struct("<4q")  # frames, height, width, channels; frames < 0 is an error


def segment_frame_indices(first: int, count: int, segments: int, training: bool, rng: random.Random) -> list[int]:
    """One frame per equal segment of [first, first + count): a random frame of each in
    training, the middle one in evaluation. Short clips repeat frames."""
    indices = []
    for s in range(segments):
        lo = first + (s * count) // segments
        hi = max(first + ((s + 1) * count) // segments, lo + 1)
        lo, hi = min(lo, first + count - 1), min(hi, first + count)
        indices.append(rng.randrange(lo, max(hi, lo + 1)) if training else (lo + max(hi, lo + 1) - 1) // 2)
    return indices


def _decode(data: bytes, frames: int, start: float | None, end: float | None, training: bool, seed: int) -> np.ndarray:
    import decord  # imported in the child only, where its threads live

    reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
    total = len(reader)
    if total <= 0:
        raise ValueError("no frames")
    first, last = 0, total
    fps = reader.get_avg_fps()
    if start is not None and end is not None and fps > 0 and end > start:
        first = min(max(int(start * fps), 0), total - 1)
        last = max(min(int(round(end * fps)), total), first + 1)
    indices = segment_frame_indices(first, last - first, frames, training, random.Random(seed))
    return reader.get_batch(indices).asnumpy()


def _read_exactly(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


_REQUEST = struct.Struct("<q q d d ? ? Q")  # bytes, frames, start, end, has_clip, training, seed


def _serve(requests: int, replies: int) -> None:
    """The child's loop: read a clip request, answer with frames or an error text."""
    while True:
        try:
            size, frames, start, end, has_clip, training, seed = _REQUEST.unpack(_read_exactly(requests, _REQUEST.size, None))
            data = _read_exactly(requests, size, None)
        except EOFError:  # the parent is gone
            return
        try:
            array = np.ascontiguousarray(
                _decode(data, frames, start if has_clip else None, end if has_clip else None, training, seed),
                dtype=np.uint8)
            payload = _HEADER.pack(*array.shape) + array.tobytes()
        except Exception as exn:  # any failure is reported, as text, to the parent
            message = f"{type(exn).__name__}: {exn}".encode()[:500]
            payload = _HEADER.pack(-1, len(message), 0, 0) + message
        _write_all(replies, payload)


class ClipDecoder:
    """A decoding child process and the pipes to it; one per process (see `decode_clip`)."""

    def __init__(self):
        self.pid: int | None = None

    def _start(self) -> None:
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(request_write)
                os.close(reply_read)
                _serve(request_read, reply_write)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(request_read)
        os.close(reply_write)
        self.pid, self.requests, self.replies = pid, request_write, reply_read

    def close(self) -> None:
        if self.pid is None:
            return
        os.close(self.requests)
        os.close(self.replies)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        self.pid = None

    def decode(self, data: bytes, frames: int, start: float | None, end: float | None, training: bool,
               seed: int, timeout_s: float) -> np.ndarray:
        if self.pid is None:
            self._start()
        has_clip = start is not None and end is not None
        deadline = time.monotonic() + timeout_s
        try:
            _write_all(self.requests, _REQUEST.pack(len(data), frames, start or 0.0, end or 0.0, has_clip, training,
                                                    seed) + data)
            header = _HEADER.unpack(_read_exactly(self.replies, _HEADER.size, deadline))
            if header[0] < 0:
                message = _read_exactly(self.replies, header[1], deadline).decode(errors="replace")
                raise BadSample("video_decode", message)
            body = _read_exactly(self.replies, int(np.prod(header)), deadline)
            return np.frombuffer(body, dtype=np.uint8).reshape(header)
        except TimeoutError:
            self.close()
            raise BadSample("video_timeout", f"decoding took longer than {timeout_s} s") from None
        except (EOFError, BrokenPipeError):
            self.close()
            raise BadSample("video_decode", "decoder process died") from None


_decoder: ClipDecoder | None = None
_decoder_pid: int | None = None


def decode_clip(data: bytes, frames: int, start: float | None, end: float | None, training: bool,
                rng: random.Random, timeout_s: float) -> np.ndarray:
    """(frames, H, W, 3) uint8, decoded within `timeout_s` seconds or a BadSample."""
    global _decoder, _decoder_pid
    if _decoder is None or _decoder_pid != os.getpid():
        # A forked DataLoader worker must not share its parent's decoder and pipes.
        _decoder, _decoder_pid = ClipDecoder(), os.getpid()
    return _decoder.decode(data, frames, start, end, training, rng.getrandbits(63), timeout_s)
