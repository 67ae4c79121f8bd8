"""Checks on the texts, boxes and clip times of one sample. Each bad caption or region
becomes a `Rejection`; the rest of the sample is kept. A box partly outside the image is
clipped to it, a box wholly outside is rejected."""
from __future__ import annotations

import math

from ..schema import region_entry
from .records import Region, Rejection, Text
from .values import shown

# A clip may end at the container's duration; allow for its rounding.
CLIP_TOLERANCE_S = 1e-3


def caption_problem(text) -> str | None:
    if not isinstance(text, str):
        return "caption is not a string"
    if any("\udc80" <= ch <= "\udcff" for ch in text) or any("\ud800" <= ch <= "\udfff" for ch in text):
        return "caption is not valid UTF-8"
    if not text.strip():
        return "empty caption"
    return None


def clean_captions(texts: list[Text], key: str, media: str, rejected: list[Rejection]) -> list[str]:
    kept = []
    for text in texts:
        problem = caption_problem(text.text)
        if problem:
            rejected.append(Rejection(problem, "caption", text.origin, key, media, text.text))
        else:
            kept.append(text.text.strip())
    return kept


def _is_number(value) -> bool:
    """A finite int or float; an int of any size is finite (math.isfinite would overflow on it)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def clip_problem(start, end, duration: float | None = None) -> str | None:
    """Why `start` / `end` (seconds, each optional) cannot name a clip of a video lasting
    `duration` seconds (None: not known yet), or None when they can."""
    for name, value in (("start", start), ("end", end)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"clip {name} must be a number of seconds, got {shown(value)}"
        if not _is_number(value):
            return f"clip {name} is not a finite number of seconds: {shown(value)}"
        if value < 0:
            return f"clip {name} is negative: {shown(value)}"
    if end is not None and end <= (start or 0):
        return f"clip end {shown(end)} is not after its start {shown(start or 0)}"
    if duration is not None and ((start is not None and start >= duration)
                                 or (end is not None and end > duration + CLIP_TOLERANCE_S)):
        return f"clip start={shown(start)} end={shown(end)} does not lie inside the {duration} s video"
    return None


# Box values beyond this are nonsense for any image, and an int beyond it would overflow when
# added to a float coordinate.
MAX_COORDINATE = 2 ** 53


def _is_coordinate(value) -> bool:
    return _is_number(value) and abs(value) <= MAX_COORDINATE


def box_in_image(box, width: int, height: int) -> tuple[list | None, str | None]:
    """The box clipped to the image, or None and why it cannot be used."""
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_coordinate(v) for v in box):
        return None, f"malformed box {shown(box)}: expected [x, y, w, h] finite numbers"
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return None, f"box has zero area or a negative size (w={shown(w)}, h={shown(h)})"
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return None, f"box lies wholly outside the {width}x{height} image"
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, width), min(y + h, height)
    return [x0, y0, x1 - x0, y1 - y0], None


def clean_regions(regions: list[Region], width: int, height: int, key: str, media: str,
                  rejected: list[Rejection]) -> list[dict]:
    """Regions that survive, as {"box", "captions", "label"} with boxes in original pixels."""
    kept = []
    for region in regions:
        box, problem = box_in_image(region.box, width, height)
        if problem:
            rejected.append(Rejection(problem, "region", region.origin, key, media, region.box))
            continue
        captions = clean_captions(region.captions, key, media, rejected)
        label = region.label.strip() if caption_problem(region.label) is None else None
        if not captions and label is None:
            rejected.append(Rejection("region has no valid caption or label", "region", region.origin, key, media, region.box))
            continue
        kept.append(region_entry(box, captions, label))
    return kept
