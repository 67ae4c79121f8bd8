"""One planned sample to its tar members: media (as stored), `json` metadata, `txt` caption.

Media paths come from annotation files, so they are resolved here, where the file is
opened: a path that is absolute, climbs out with `..`, or reaches outside through a
symbolic link is rejected, and the file is read from its resolved path only, so that no
byte from outside --media-root ever reaches a shard.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .. import schema
from ..io.tar_stream import DEFAULT_MAX_MEMBER_BYTES
from .images import store_image
from .records import MediaError, Rejection, Sample
from .validate import clean_captions, clean_regions, clip_problem
from .values import shown
from .videos import probe_video


@dataclass(frozen=True)
class EncodeOptions:
    media_root: Path
    source: str
    max_image_side: int | None
    jpeg_quality: int


@dataclass
class EncodedSample:
    members: list[tuple[str, bytes]]
    captions: int
    regions: int


def _printable(path: str) -> str:
    """A media path as valid UTF-8 text; file names need not be."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([root, path]) == root


def resolve_media(media_root: Path, media: str) -> str:
    """The real path (every symbolic link followed) of `media`, a path relative to
    `media_root`; `MediaError` unless it lies inside the real media root."""
    if "\0" in media:
        raise MediaError(f"media path holds a NUL character: {shown(media)}")
    if os.path.isabs(media):
        raise MediaError(f"media path leaves --media-root: {media} is absolute")
    root = os.path.realpath(media_root)
    joined = os.path.normpath(os.path.join(root, media))
    if not _inside(joined, root):
        raise MediaError(f"media path leaves --media-root: {media}")
    try:
        real = os.path.realpath(joined)
    except ValueError:  # a lone surrogate (from a JSON escape) names no file on this system
        raise MediaError(f"media path is not a valid file name: {shown(media)}") from None
    if not _inside(real, root):
        raise MediaError(f"media path leaves --media-root through a symbolic link: {media} resolves to {real}")
    return real


def _read(path: str) -> bytes:
    """The bytes of the regular file at `path`, which holds no symbolic link (see `resolve_media`)."""
    try:
        # O_NOFOLLOW: a link put in place since the path was resolved is not followed;
        # O_NONBLOCK: a FIFO is refused below instead of blocking the open.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MediaError("missing file") from None
    except OSError as error:
        raise MediaError(f"cannot open file: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MediaError("not a regular file")
        # The loader skips a member larger than its cap unread: a bigger file is no sample, and
        # reading it whole (a sparse 20 GB file) would take the builder's memory first.
        if info.st_size > DEFAULT_MAX_MEMBER_BYTES:
            raise MediaError(f"file of {info.st_size} bytes, above the loader's member cap ({DEFAULT_MAX_MEMBER_BYTES})")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 22):
            chunks.append(chunk)
            size += len(chunk)
            if size > DEFAULT_MAX_MEMBER_BYTES:  # a file that grows while it is read
                raise MediaError(f"file grew above the loader's member cap ({DEFAULT_MAX_MEMBER_BYTES}) while read")
        return b"".join(chunks)
    except OSError as error:
        raise MediaError(f"cannot read file: {error.strerror}") from None
    finally:
        os.close(fd)


def encode_sample(sample: Sample, options: EncodeOptions, rejected: list[Rejection]) -> EncodedSample | None:
    """The sample's members, or None when it is rejected; every rejection goes to `rejected`."""
    try:
        data = _read(resolve_media(options.media_root, sample.media))
        if sample.kind == "video":
            return _encode_video(sample, data, options, rejected)
        return _encode_image(sample, data, options, rejected)
    except MediaError as error:
        rejected.append(Rejection(str(error), "sample", sample.origins[0], sample.key, sample.media))
    except Exception as error:  # one odd file must not end a build of millions; it is reported instead
        rejected.append(Rejection(f"unexpected error: {type(error).__name__}: {error}", "sample", sample.origins[0],
                                  sample.key, sample.media))
    return None


def _finish(sample: Sample, media: tuple[str, bytes], meta: dict, rejected: list[Rejection]) -> EncodedSample | None:
    if not meta["captions"] and not meta["regions"]:
        rejected.append(Rejection("no valid caption or region left", "sample", sample.origins[0], sample.key, sample.media))
        return None
    return EncodedSample(schema.sample_members(*media, meta), len(meta["captions"]), len(meta["regions"]))


def _encode_image(sample: Sample, data: bytes, options: EncodeOptions, rejected: list[Rejection]) -> EncodedSample | None:
    stored, (width, height) = store_image(data, options.max_image_side, options.jpeg_quality)
    if sample.size is not None and tuple(sample.size) != (width, height):
        raise MediaError(f"the annotation gives the image as {sample.size[0]}x{sample.size[1]} but it is {width}x{height}")
    captions = clean_captions(sample.captions, sample.key, sample.media, rejected)
    regions = clean_regions(sample.regions, width, height, sample.key, sample.media, rejected)
    if (stored.width, stored.height) != (width, height):
        # Per axis, so that the whole original image maps onto the whole stored one.
        for region in regions:
            x, y, w, h = region["box"]
            region["box"] = [x * stored.width / width, y * stored.height / height,
                             w * stored.width / width, h * stored.height / height]
    meta = schema.image_info(options.source, stored.width, stored.height, captions, regions,
                             {"path": _printable(sample.media), "width": width, "height": height})
    return _finish(sample, (stored.extension, stored.data), meta, rejected)


def _encode_video(sample: Sample, data: bytes, options: EncodeOptions, rejected: list[Rejection]) -> EncodedSample | None:
    info = probe_video(data)
    start, end = sample.start, sample.end
    problem = clip_problem(start, end, info.duration)
    if problem:
        raise MediaError(problem)
    captions = clean_captions(sample.captions, sample.key, sample.media, rejected)
    if sample.regions:
        rejected.extend(Rejection("regions are not kept for videos", "region", r.origin, sample.key, sample.media, r.box)
                        for r in sample.regions)
    meta = schema.video_info(options.source, info.width, info.height, captions, info.duration, info.fps, start, end,
                             info.frames, {"path": _printable(sample.media), "width": info.width, "height": info.height})
    return _finish(sample, ("mp4", data), meta, rejected)
