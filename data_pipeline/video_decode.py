"""MP4 decoding with decord under a time limit.

decord can spin forever inside native code on a file that over-reports its frame count
(dmlc/decord issue 373); no Python-level timeout can interrupt that. So each clip is
decoded in a forked child that writes the frames to a pipe; the parent waits at most
`timeout_s` and kills the child if it is late. A bad file costs one skipped sample and a
fork, never a hung worker. (os.fork rather than multiprocessing: DataLoader workers are
daemonic and may not start multiprocessing children.)
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

from .sample_meta import BadSample

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
    import decord  # imported in the child only: decord's threads must not exist at fork time

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


def _read_exactly(fd: int, n: int, deadline: float) -> bytes:
    chunks, got = [], 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def decode_clip(data: bytes, frames: int, start: float | None, end: float | None, training: bool,
                rng: random.Random, timeout_s: float) -> np.ndarray:
    """(frames, H, W, 3) uint8, decoded in a child process within `timeout_s` seconds."""
    seed = rng.getrandbits(63)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: decode, write, leave without running the parent's cleanup
        code = 0
        try:
            os.close(read_fd)
            try:
                array = np.ascontiguousarray(_decode(data, frames, start, end, training, seed), dtype=np.uint8)
                payload = _HEADER.pack(*array.shape) + array.tobytes()
            except Exception as exn:  # any failure is reported, as text, to the parent
                payload = _HEADER.pack(-1, 0, 0, 0) + f"{type(exn).__name__}: {exn}".encode()[:500]
            view = memoryview(payload)
            while view:
                view = view[os.write(write_fd, view):]
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    deadline = time.monotonic() + timeout_s
    try:
        header = _HEADER.unpack(_read_exactly(read_fd, _HEADER.size, deadline))
        if header[0] < 0:
            raise BadSample("video_decode", os.read(read_fd, 1000).decode(errors="replace"))
        body = _read_exactly(read_fd, int(np.prod(header)), deadline)
        return np.frombuffer(body, dtype=np.uint8).reshape(header)
    except TimeoutError:
        raise BadSample("video_timeout", f"decoding took longer than {timeout_s} s") from None
    except EOFError:
        raise BadSample("video_decode", "decoder process died") from None
    finally:
        os.close(read_fd)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
