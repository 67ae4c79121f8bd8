"""Checks on the texts and boxes of one sample. Each bad caption or region becomes a
`Rejection`; the rest of the sample is kept. A box partly outside the image is clipped to
it, a box wholly outside is rejected."""
from __future__ import annotations

import math

from ..schema import region_entry
from .records import Region, Rejection, Text


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
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def box_in_image(box, width: int, height: int) -> tuple[list | None, str | None]:
    """The box clipped to the image, or None and why it cannot be used."""
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
        return None, f"malformed box {box!r}: expected [x, y, w, h] numbers"
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return None, f"box has zero area or a negative size (w={w}, h={h})"
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
