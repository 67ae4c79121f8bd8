"""COCO captions (`captions_*.json`) and COCO instances (`instances_*.json`).

Both list `images` (id, file_name, width, height) and `annotations` pointing at them by
`image_id`. One record per listed image, in the file's order; an image without
annotations still yields a record, so that an image left with nothing is reported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..records import AnnotationError, Record, Region, Rejection, Text
from .text_files import load_json


def _images(path: Path, data, fmt: str) -> dict:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise AnnotationError(path, f"is not a {fmt} file: expected a JSON object with 'images' and 'annotations' lists")
    images = {}
    for entry in data["images"]:
        if not isinstance(entry, dict) or "id" not in entry or not isinstance(entry.get("file_name"), str):
            raise AnnotationError(path, f"is not a {fmt} file: an entry of 'images' lacks 'id' or 'file_name': {entry!r:.200}")
        images[entry["id"]] = entry
    return images


def _record(path: Path, entry: dict) -> Record:
    size = (entry["width"], entry["height"]) if isinstance(entry.get("width"), int) and isinstance(entry.get("height"), int) else None
    return Record(entry["file_name"], "image", f"{path}#image_id={entry['id']}", size=size)


def read_coco_captions(path: Path, **_) -> Iterator[Record | Rejection]:
    data = load_json(path, "coco-captions")
    images = _images(path, data, "coco-captions")
    records = {image_id: _record(path, entry) for image_id, entry in images.items()}
    for index, ann in enumerate(data["annotations"]):
        origin = f"{path}#annotations[{index}]"
        record = records.get(ann.get("image_id")) if isinstance(ann, dict) else None
        if record is None:
            yield Rejection(f"annotation refers to no listed image (image_id {ann.get('image_id') if isinstance(ann, dict) else None!r})", "record", origin)
        elif not isinstance(ann.get("caption"), str):
            yield Rejection("annotation has no 'caption' string", "record", origin, media=record.media)
        else:
            record.captions.append(Text(ann["caption"], origin))
    yield from records.values()


def read_coco_instances(path: Path, **_) -> Iterator[Record | Rejection]:
    data = load_json(path, "coco-instances")
    images = _images(path, data, "coco-instances")
    categories = {c.get("id"): c.get("name") for c in data.get("categories", []) if isinstance(c, dict)}
    records = {image_id: _record(path, entry) for image_id, entry in images.items()}
    for index, ann in enumerate(data["annotations"]):
        origin = f"{path}#annotations[{index}]"
        record = records.get(ann.get("image_id")) if isinstance(ann, dict) else None
        if record is None:
            yield Rejection(f"annotation refers to no listed image (image_id {ann.get('image_id') if isinstance(ann, dict) else None!r})", "record", origin)
        elif ann.get("category_id") not in categories:
            yield Rejection(f"annotation has unknown category_id {ann.get('category_id')!r}", "record", origin, media=record.media)
        else:
            record.regions.append(Region(ann.get("bbox"), [], categories[ann["category_id"]], origin))
    yield from records.values()
