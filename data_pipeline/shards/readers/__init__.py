"""One reader per annotation format. A reader takes the annotation path and yields a
`Record` per media entry, or a `Rejection` for an entry it cannot use; it raises
`AnnotationError` when the file is not of its format at all."""
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
