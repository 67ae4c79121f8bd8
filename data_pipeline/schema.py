"""The shard sample: its tar members and the layout of its `json`, read and written here only.

One sample is one image or one video with every text that belongs to it:

- members `KEY.jpg` / `KEY.png` / `KEY.webp` (image) or `KEY.mp4` (video), `KEY.json`,
  `KEY.txt` (the first caption);
- `json`: `source`, the stored `width` / `height`, `captions` (a list), `regions` (each
  `{"box": [x, y, w, h] in stored pixels, "captions": [...], "label": str | None}`),
  `original` (path and size before any build-time resize); for video also `duration`,
  `fps`, `start`, `end` (the clip, seconds) and `frames`.

Shards written by img2dataset / video2dataset are read as they are: their caption is the
`txt` member (or `caption` in their own `json`), they have no regions, and their `json`
holds fields of their own (url, status, sha256, ...), which are kept in `info` untouched.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from .skips import BadSample

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
VIDEO_EXTENSIONS = ("mp4",)
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
# Boxes may stick out of the image by rounding; beyond this many pixels they are wrong.
BOX_TOLERANCE_PX = 1.0


@dataclass
class Region:
    box: tuple[float, float, float, float]  # x, y, w, h in pixels of the stored image
    texts: list[str]


@dataclass
class SampleMeta:
    key: str
    info: dict
    captions: list[str]
    regions: list[Region] = field(default_factory=list)
    # Region entries left out as malformed (`bad_region`, `bad_box`): they cost only themselves,
    # and nothing to a corpus that reads the sample for its captions.
    dropped: list[str] = field(default_factory=list)

    def seconds(self, name: str) -> float | None:
        """A clip bound (`start` / `end`) when the json gives it as a finite number."""
        value = self.info.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        return None


# Writing ---------------------------------------------------------------------------------

def region_entry(box: list[float], captions: list[str], label: str | None) -> dict:
    return {"box": list(box), "captions": list(captions), "label": label}


def image_info(source: str, width: int, height: int, captions: list[str], regions: list[dict],
               original: dict) -> dict:
    return {"source": source, "width": width, "height": height, "captions": list(captions),
            "regions": list(regions), "original": original}


def video_info(source: str, width: int, height: int, captions: list[str], duration: float | None,
               fps: float | None, start: float | None, end: float | None, frames: int, original: dict) -> dict:
    return {"source": source, "width": width, "height": height, "captions": list(captions), "regions": [],
            "duration": duration, "fps": fps, "start": start, "end": end, "frames": frames, "original": original}


def sample_members(media_extension: str, media: bytes, info: dict) -> list[tuple[str, bytes]]:
    """The members of one sample in stored order: media, json, and txt when there is a caption."""
    members = [(media_extension, media), ("json", json.dumps(info, ensure_ascii=False).encode("utf-8"))]
    if info["captions"]:
        members.append(("txt", info["captions"][0].encode("utf-8")))
    return members


def sample_dict(key: str, media_extension: str, media: bytes, info: dict) -> dict:
    """The same sample as the dict webdataset's TarWriter takes (`__key__` plus members)."""
    return {"__key__": key, **dict(sample_members(media_extension, media, info))}


# Reading ---------------------------------------------------------------------------------

def media_of(sample: dict, extensions: tuple[str, ...]) -> bytes:
    for ext in extensions:
        data = sample.get(ext)
        if data:
            return data
    raise BadSample("missing_media", f"none of {', '.join(extensions)} in {sorted(k for k in sample if not k.startswith('__'))}")


def media_extension(sample: dict) -> str | None:
    """The extension of the sample's media member, or None when it has none."""
    return next((ext for ext in MEDIA_EXTENSIONS if sample.get(ext)), None)


def _text(value) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return value.strip() if isinstance(value, str) and value.strip() else None


def parse_meta(sample: dict) -> SampleMeta:
    key = sample.get("__key__", "")
    info: dict = {}
    if sample.get("json") is not None:
        try:
            info = json.loads(sample["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exn:
            raise BadSample("bad_json", f"{type(exn).__name__}: {exn}") from None
        if not isinstance(info, dict):
            raise BadSample("bad_json", "not an object")
    raw_captions = info.get("captions")
    if isinstance(raw_captions, list):
        captions = [c.strip() for c in raw_captions if isinstance(c, str) and c.strip()]
    else:
        # img2dataset / video2dataset: the caption is the txt member (or json "caption").
        try:
            caption = _text(sample.get("txt")) or _text(info.get("caption"))
        except UnicodeDecodeError:
            raise BadSample("bad_text", "txt is not UTF-8") from None
        captions = [caption] if caption else []
    raw_regions = info.get("regions") or []
    if not isinstance(raw_regions, list):
        raise BadSample("bad_region", "regions is not a list")
    regions, dropped = [], []
    for entry in raw_regions:
        if not isinstance(entry, dict):
            dropped.append("bad_region")
            continue
        box = entry.get("box")
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
            dropped.append("bad_box")
            continue
        raw_texts = entry.get("captions")
        texts = [t.strip() for t in raw_texts if isinstance(t, str) and t.strip()] if isinstance(raw_texts, list) else []
        if not texts and _text(entry.get("label")):
            texts = [_text(entry["label"])]
        if texts:
            regions.append(Region(tuple(float(v) for v in box), texts))
    return SampleMeta(key, info, captions, regions, dropped)


def checked_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float]:
    """The box clipped to the image; a box with no area or well outside is a bad sample."""
    x, y, w, h = box
    t = BOX_TOLERANCE_PX
    if w <= 0 or h <= 0 or x < -t or y < -t or x + w > width + t or y + h > height + t:
        raise BadSample("bad_box", f"{list(box)} in a {width}x{height} image")
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        raise BadSample("bad_box", f"{list(box)} in a {width}x{height} image")
    return x0, y0, x1 - x0, y1 - y0
