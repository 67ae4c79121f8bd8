"""Visual Genome region descriptions (`region_descriptions.json`).

A list of {"id": image_id, "regions": [{"phrase", "x", "y", "width", "height", ...}]}.
The file names no image; Visual Genome stores image N as `N.jpg`, so the media path is
`<id>.jpg` under --media-root. A malformed entry or region is rejected on its own; a file
where no entry is an object with "regions" is not a Visual Genome file at all.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..records import AnnotationError, Record, Region, Rejection, Text
from ..values import is_id, shown
from .text_files import load_json


def read_vg_regions(path: Path, **_) -> Iterator[Record | Rejection]:
    data = load_json(path, "vg-regions")
    if not isinstance(data, list) or (data and not any(isinstance(e, dict) and "regions" in e for e in data)):
        raise AnnotationError(path, "is not a vg-regions file: expected a JSON list of {\"id\", \"regions\"} objects")
    for index, entry in enumerate(data):
        if not isinstance(entry, dict):
            yield Rejection(f"entry is not a JSON object: {shown(entry)}", "record", f"{path}#{index}")
            continue
        image_id = entry.get("id", entry.get("image_id"))
        if not is_id(image_id):
            yield Rejection(f"entry has no usable image 'id' (an integer or a string): {shown(image_id)}", "record", f"{path}#{index}")
            continue
        record = Record(f"{image_id}.jpg", "image", f"{path}#id={image_id}")
        if not isinstance(entry.get("regions"), list):
            yield Rejection(f"entry's 'regions' is not a list: {shown(entry.get('regions'))}", "record", record.origin,
                            media=record.media)
            continue
        for number, region in enumerate(entry["regions"]):
            origin = f"{path}#id={image_id}/regions[{number}]"
            if not isinstance(region, dict) or not isinstance(region.get("phrase"), str):
                yield Rejection("region has no 'phrase' string", "region", origin, media=record.media)
                continue
            box = [region.get(name) for name in ("x", "y", "width", "height")]
            record.regions.append(Region(box, [Text(region["phrase"], origin)], None, origin))
        yield record
