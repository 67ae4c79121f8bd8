"""Reads what a raw shard sample says about itself: its media, captions and regions.

Understands the project's own `json` (captions list, regions with boxes) and the shards
img2dataset / video2dataset write (`txt` caption, a `json` of their own fields).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
VIDEO_EXTENSIONS = ("mp4",)
# Boxes may stick out of the image by rounding; beyond this many pixels they are wrong.
BOX_TOLERANCE_PX = 1.0


class BadSample(ValueError):
    """A sample to skip; `reason` is the counter it is reported under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


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


def media_of(sample: dict, extensions: tuple[str, ...]) -> bytes:
    for ext in extensions:
        data = sample.get(ext)
        if data:
            return data
    raise BadSample("missing_media", f"none of {', '.join(extensions)} in {sorted(k for k in sample if not k.startswith('__'))}")


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
        except (UnicodeDecodeError, json.JSONDecodeError) as exn:
            raise BadSample("bad_json", str(exn)) from None
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
    regions = []
    for entry in info.get("regions") or []:
        if not isinstance(entry, dict):
            raise BadSample("bad_region", "region is not an object")
        box = entry.get("box")
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
            raise BadSample("bad_box", f"{box!r}")
        texts = [t.strip() for t in entry.get("captions") or [] if isinstance(t, str) and t.strip()]
        if not texts and _text(entry.get("label")):
            texts = [_text(entry["label"])]
        if texts:
            regions.append(Region(tuple(float(v) for v in box), texts))
    return SampleMeta(key, info, captions, regions)


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
