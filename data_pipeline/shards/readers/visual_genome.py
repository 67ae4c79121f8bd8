"""Visual Genome region descriptions (`region_descriptions.json`).

A list of {"id": image_id, "regions": [{"phrase", "x", "y", "width", "height", ...}]}.
The file names no image; Visual Genome stores image N as `N.jpg`, so the media path is
`<id>.jpg` under --media-root.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..records import AnnotationError, Record, Region, Rejection, Text
from .text_files import load_json


def read_vg_regions(path: Path, **_) -> Iterator[Record | Rejection]:
    data = load_json(path, "vg-regions")
    if not isinstance(data, list) or not all(isinstance(e, dict) and "regions" in e for e in data):
        raise AnnotationError(path, "is not a vg-regions file: expected a JSON list of {\"id\", \"regions\"} objects")
    for index, entry in enumerate(data):
        image_id = entry.get("id", entry.get("image_id"))
        if image_id is None:
            yield Rejection("entry has no image 'id'", "record", f"{path}#{index}")
            continue
        record = Record(f"{image_id}.jpg", "image", f"{path}#id={image_id}")
        for number, region in enumerate(entry["regions"]):
            origin = f"{path}#id={image_id}/regions[{number}]"
            if not isinstance(region, dict) or not isinstance(region.get("phrase"), str):
                yield Rejection("region has no 'phrase' string", "region", origin, media=record.media)
                continue
            box = [region.get(name) for name in ("x", "y", "width", "height")]
            record.regions.append(Region(box, [Text(region["phrase"], origin)], None, origin))
        yield record
