"""RefCOCO / RefCOCO+ / RefCOCOg as the refer toolkit ships them.

--annotations names the refs pickle (`refs(unc).p`, `refs(google).p`, ...); the COCO
`instances.json` beside it holds the images and the boxes the refs point at by `ann_id`.
Each ref is one region: its sentences are the region's captions, its category the label.
Only refs of the chosen splits are read (all when none is chosen): RefCOCO val/test
images must stay out of pre-training when those splits are used for evaluation.

The refs file is a pickle, as the toolkit ships it: only read refs files you trust.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Iterator

from ..records import AnnotationError, Record, Region, Rejection, Text
from .text_files import load_json


def _text(value):
    """Python 2 pickles (the original refs files) hold byte strings."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


def read_refcoco(path: Path, splits: tuple[str, ...] = (), **_) -> Iterator[Record | Rejection]:
    instances_path = path.parent / "instances.json"
    if not instances_path.is_file():
        raise AnnotationError(path, f"a refcoco refs file needs the COCO instances.json beside it; {instances_path} does not exist")
    try:
        refs = _text(pickle.loads(path.read_bytes(), encoding="bytes"))
    except Exception as error:  # unpickling garbage raises nearly anything
        raise AnnotationError(path, f"is not a refcoco refs pickle ({type(error).__name__}: {error})") from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) and "ann_id" in r for r in refs):
        raise AnnotationError(path, "is not a refcoco refs pickle: expected a list of refs with 'ann_id'")
    instances = load_json(instances_path, "refcoco instances")
    if not isinstance(instances, dict) or not all(isinstance(instances.get(k), list) for k in ("images", "annotations")):
        raise AnnotationError(instances_path, "is not a COCO instances file: expected 'images' and 'annotations' lists")
    images = {e.get("id"): e for e in instances["images"] if isinstance(e, dict)}
    boxes = {a.get("id"): a.get("bbox") for a in instances["annotations"] if isinstance(a, dict)}
    categories = {c.get("id"): c.get("name") for c in instances.get("categories", []) if isinstance(c, dict)}
    for ref in refs:
        if splits and ref.get("split") not in splits:
            continue
        origin = f"{path}#ref_id={ref.get('ref_id')}"
        image = images.get(ref.get("image_id"))
        if image is None or not isinstance(image.get("file_name"), str):
            yield Rejection(f"ref points at image_id {ref.get('image_id')!r}, which {instances_path} does not list", "record", origin)
            continue
        if ref["ann_id"] not in boxes:
            yield Rejection(f"ref points at ann_id {ref['ann_id']!r}, which {instances_path} does not list", "record", origin,
                            media=image["file_name"])
            continue
        sentences = [s.get("sent", s.get("raw")) if isinstance(s, dict) else s for s in ref.get("sentences", [])]
        size = (image["width"], image["height"]) if isinstance(image.get("width"), int) and isinstance(image.get("height"), int) else None
        region = Region(boxes[ref["ann_id"]], [Text(s if isinstance(s, str) else "", origin) for s in sentences],
                        categories.get(ref.get("category_id")), origin)
        yield Record(image["file_name"], "image", origin, regions=[region], size=size)
