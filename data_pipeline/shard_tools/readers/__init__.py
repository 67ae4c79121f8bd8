"""One reader per annotation format. A reader takes the annotation path and yields a
`Record` per media entry, or a `Rejection` for an entry it cannot use; it raises
`AnnotationError` when the file is not of its format at all."""
import os
from pathlib import Path

from .coco import read_coco_captions, read_coco_instances
from .generic import read_csv, read_jsonl, read_video_jsonl
from .refcoco import read_refcoco
from .visual_genome import read_vg_regions

READERS = {
    "jsonl": read_jsonl,
    "csv": read_csv,
    "coco-captions": read_coco_captions,
    "coco-instances": read_coco_instances,
    "vg-regions": read_vg_regions,
    "refcoco": read_refcoco,
    "video-jsonl": read_video_jsonl,
}
FORMATS = tuple(READERS)


def annotation_file_problem(path: Path) -> str | None:
    """Why PATH cannot be read as an annotation file, or None."""
    if not path.exists():
        return f"annotation file not found: {path}"
    if not path.is_file():
        return f"annotation path is not a file: {path}"
    if not os.access(path, os.R_OK):
        return f"annotation file is not readable: {path}"
    return None
