"""Video checks. A video goes into the shard unchanged; it is decoded once here so that a
broken file is rejected at build time, and its real frame count, fps and duration are
recorded. It is probed from the bytes that go into the shard, not opened again by path."""
from __future__ import annotations

import io
from dataclasses import dataclass

import av

from .records import MediaError


@dataclass
class VideoInfo:
    width: int
    height: int
    duration: float | None
    fps: float | None
    frames: int


def probe_video(data: bytes) -> VideoInfo:
    if not data:
        raise MediaError("cannot decode video: the file is empty (0 bytes)")
    try:
        with av.open(io.BytesIO(data)) as container:
            if "mp4" not in container.format.name.split(","):
                raise MediaError(f"unsupported video container {container.format.name} (mp4 is stored)")
            if not container.streams.video:
                raise MediaError("cannot decode video: no video stream")
            stream = container.streams.video[0]
            frames = sum(1 for _ in container.decode(stream))
            width, height = stream.codec_context.width, stream.codec_context.height
            fps = float(stream.average_rate) if stream.average_rate else None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = None
    except MediaError:
        raise
    except Exception as error:  # PyAV raises its own error classes, OSError and ValueError
        raise MediaError(f"cannot decode video: {type(error).__name__}: {error}") from None
    if frames == 0:
        raise MediaError("cannot decode video: no frame decodes")
    return VideoInfo(width, height, duration, fps, frames)
