"""COCO captions (`captions_*.json`) and COCO instances (`instances_*.json`).

Both list `images` (id, file_name, width, height) and `annotations` pointing at them by
`image_id`. One record per listed image, in the file's order; an image without
annotations still yields a record, so that an image left with nothing is reported.
A malformed image, annotation or category entry is rejected on its own; a file where no
entry of `images` has an id and a file name is not a COCO file at all.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..records import AnnotationError, Record, Region, Rejection, Text
from ..values import image_size, is_id, lookup, shown
from .text_files import load_json


class ImageTable:
    """The `images` list of a COCO file as records by id, plus the rejections of its bad entries."""

    def __init__(self, path: Path, images: list, fmt: str):
        self.path = path
        self.records: dict = {}
        self.rejected: list[Rejection] = []
        self._rejected_ids: set = set()
        for index, entry in enumerate(images):
            self._add(index, entry)
        if images and not any(isinstance(e, dict) and "id" in e and "file_name" in e for e in images):
            raise AnnotationError(path, f"is not a {fmt} file: no entry of 'images' is an object with 'id' and 'file_name'")

    def _add(self, index: int, entry) -> None:
        origin = f"{self.path}#images[{index}]"
        if not isinstance(entry, dict):
            self.rejected.append(Rejection(f"image entry is not a JSON object: {shown(entry)}", "record", origin))
            return
        image_id, file_name = entry.get("id"), entry.get("file_name")
        if not is_id(image_id):
            self.rejected.append(Rejection(f"image entry has no usable 'id' (an integer or a string): {shown(image_id)}",
                                           "record", origin))
            return
        problem = None
        size, size_problem = image_size(entry)
        if not isinstance(file_name, str) or not file_name:
            problem = f"image entry has no 'file_name' string: {shown(file_name)}"
        elif size_problem:
            problem = f"image entry has {size_problem}"
        elif image_id in self.records or image_id in self._rejected_ids:
            problem = f"duplicate image id {shown(image_id)}"
        if problem:
            self.rejected.append(Rejection(problem, "record", origin, media=file_name if isinstance(file_name, str) else None))
            self._rejected_ids.add(image_id)
            return
        self.records[image_id] = Record(file_name, "image", f"{self.path}#image_id={image_id}", size=size)

    def find(self, image_id, origin: str, what: str = "annotation") -> tuple[Record | None, Rejection | None]:
        """The record an annotation's (or a ref's) `image_id` points at, or the rejection of `what` points."""
        record = lookup(self.records, image_id)
        if record is not None:
            return record, None
        if is_id(image_id) and image_id in self._rejected_ids:
            return None, Rejection(f"{what} points at image_id {shown(image_id)}, whose entry in {self.path} is rejected",
                                   "record", origin)
        return None, Rejection(f"{what} points at image_id {shown(image_id)}, which {self.path} does not list", "record", origin)


def _load(path: Path, fmt: str) -> tuple[dict, ImageTable]:
    data = load_json(path, fmt)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise AnnotationError(path, f"is not a {fmt} file: expected a JSON object with 'images' and 'annotations' lists")
    return data, ImageTable(path, data["images"], fmt)


def _annotations(path: Path, data: dict, images: ImageTable) -> Iterator[tuple[str, dict, Record | None, Rejection | None]]:
    """(origin, annotation, its image's record, None) or (origin, annotation, None, the rejection)."""
    for index, ann in enumerate(data["annotations"]):
        origin = f"{path}#annotations[{index}]"
        if not isinstance(ann, dict):
            yield origin, ann, None, Rejection(f"annotation is not a JSON object: {shown(ann)}", "record", origin)
        else:
            yield origin, ann, *images.find(ann.get("image_id"), origin)


def read_coco_captions(path: Path, **_) -> Iterator[Record | Rejection]:
    data, images = _load(path, "coco-captions")
    yield from images.rejected
    for origin, ann, record, rejection in _annotations(path, data, images):
        if rejection is not None:
            yield rejection
        elif not isinstance(ann.get("caption"), str):
            yield Rejection(f"annotation has no 'caption' string: {shown(ann.get('caption'))}", "record", origin,
                            media=record.media)
        else:
            record.captions.append(Text(ann["caption"], origin))
    yield from images.records.values()


def category_names(path: Path, data: dict) -> tuple[dict, list[Rejection]]:
    """{category id: name} of a COCO instances file, and the rejections of malformed categories."""
    categories = data.get("categories", [])
    if not isinstance(categories, list):
        raise AnnotationError(path, f"is not a COCO instances file: 'categories' is not a list but {shown(categories)}")
    names, rejected = {}, []
    for index, category in enumerate(categories):
        if isinstance(category, dict) and is_id(category.get("id")) and isinstance(category.get("name"), str):
            names[category["id"]] = category["name"]
        else:
            rejected.append(Rejection(f"category entry is not an object with an 'id' and a 'name' string: {shown(category)}",
                                      "record", f"{path}#categories[{index}]"))
    return names, rejected


def read_coco_instances(path: Path, **_) -> Iterator[Record | Rejection]:
    data, images = _load(path, "coco-instances")
    categories, rejected_categories = category_names(path, data)
    yield from images.rejected
    yield from rejected_categories
    for origin, ann, record, rejection in _annotations(path, data, images):
        if rejection is not None:
            yield rejection
        elif lookup(categories, ann.get("category_id")) is None:
            yield Rejection(f"annotation has unknown category_id {shown(ann.get('category_id'))}", "record", origin,
                            media=record.media)
        else:
            record.regions.append(Region(ann.get("bbox"), [], categories[ann["category_id"]], origin))
    yield from images.records.values()
