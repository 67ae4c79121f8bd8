"""What readers yield and what the build passes between its stages. Slotted: a plan holds
one `Sample` per media file of the corpus in memory."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

from .values import shown


class MediaError(Exception):
    """A media file that cannot become a sample; the message is the rejection reason."""


class AnnotationError(Exception):
    """An annotation file that cannot be read as its format at all: the user's mistake, not a bad sample."""

    def __init__(self, path, message: str):
        super().__init__(f"{path}: {message}")


@dataclass(slots=True)
class Text:
    text: str
    origin: str  # "file:line" or "file#index": where to look when it is rejected


@dataclass(slots=True)
class Region:
    box: list  # [x, y, w, h] in pixels of the original image, as the annotation gives it
    captions: list[Text]
    label: str | None
    origin: str


@dataclass(slots=True)
class Record:
    """One annotation entry for one media file; records for the same file merge into a sample."""
    media: str  # path relative to the media root
    kind: str  # "image" or "video"
    origin: str
    captions: list[Text] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    size: tuple[int, int] | None = None  # (width, height) the annotation claims
    start: float | None = None  # video clip, seconds
    end: float | None = None


@dataclass(slots=True)
class Sample:
    """A planned sample: every record of one media file merged, keyed for the shards."""
    key: str
    media: str
    kind: str
    origins: list[str]
    captions: list[Text]
    regions: list[Region]
    size: tuple[int, int] | None
    start: float | None
    end: float | None


@dataclass(slots=True)
class Rejection:
    reason: str
    item: str  # "record", "sample", "caption" or "region"
    origin: str | None = None
    key: str | None = None
    media: str | None = None
    value: object = None

    def to_json(self) -> dict:
        # Not asdict(): it deep-copies the value, which may be nested past the recursion limit.
        entry = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        if "value" in entry:
            try:
                json.dumps(entry["value"], allow_nan=False)
            except (TypeError, ValueError, RecursionError):
                # NaN, bytes from a refs pickle, nesting past the encoder's depth: kept as a short repr.
                entry["value"] = shown(entry["value"])
        return entry
