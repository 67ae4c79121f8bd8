"""One planned sample to its tar members: media (as stored), `json` metadata, `txt` caption."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import schema
from .images import store_image
from .records import MediaError, Rejection, Sample
from .validate import clean_captions, clean_regions
from .videos import probe_video

# A clip may end at the container's duration; allow for its rounding.
CLIP_TOLERANCE_S = 1e-3


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


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise MediaError("missing file")
    try:
        return path.read_bytes()
    except OSError as error:
        raise MediaError(f"cannot read file: {error.strerror}") from None


def encode_sample(sample: Sample, options: EncodeOptions, rejected: list[Rejection]) -> EncodedSample | None:
    """The sample's members, or None when it is rejected; every rejection goes to `rejected`."""
    path = options.media_root / sample.media
    try:
        if sample.kind == "video":
            return _encode_video(sample, path, options, rejected)
        return _encode_image(sample, path, options, rejected)
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


def _encode_image(sample: Sample, path: Path, options: EncodeOptions, rejected: list[Rejection]) -> EncodedSample | None:
    stored, (width, height) = store_image(_read(path), options.max_image_side, options.jpeg_quality)
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


def _encode_video(sample: Sample, path: Path, options: EncodeOptions, rejected: list[Rejection]) -> EncodedSample | None:
    data = _read(path)
    info = probe_video(path)
    start, end = sample.start, sample.end
    if start is not None or end is not None:
        lo = 0.0 if start is None else start
        hi = info.duration if end is None else end
        if lo < 0 or (hi is not None and hi <= lo) or (
                info.duration is not None and hi is not None and hi > info.duration + CLIP_TOLERANCE_S):
            raise MediaError(f"clip start={start} end={end} does not lie inside the {info.duration} s video")
    captions = clean_captions(sample.captions, sample.key, sample.media, rejected)
    if sample.regions:
        rejected.extend(Rejection("regions are not kept for videos", "region", r.origin, sample.key, sample.media, r.box)
                        for r in sample.regions)
    meta = schema.video_info(options.source, info.width, info.height, captions, info.duration, info.fps, start, end,
                             info.frames, {"path": _printable(sample.media), "width": info.width, "height": info.height})
    return _finish(sample, ("mp4", data), meta, rejected)
