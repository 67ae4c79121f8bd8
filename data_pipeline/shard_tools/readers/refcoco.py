"""RefCOCO / RefCOCO+ / RefCOCOg as the refer toolkit ships them.

--annotations names the refs pickle (`refs(unc).p`, `refs(google).p`, ...); the COCO
`instances.json` beside it holds the images and the boxes the refs point at by `ann_id`.
Each ref is one region: its sentences are the region's captions, its category the label.
Only refs of the chosen splits are read (all when none is chosen): RefCOCO val/test
images must stay out of pre-training when those splits are used for evaluation.

The refs file is a pickle, but it is read without running anything in it: a refs file
holds only lists, dicts, strings and numbers, which the pickle opcodes build by
themselves, so every global a pickle asks for (a class or function it would call) is
refused and the file with it.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Iterator

from ..records import AnnotationError, Record, Region, Rejection, Text
from ..values import is_id, lookup, shown
from .coco import ImageTable, category_names
from .text_files import load_json


class _GlobalRefused(pickle.UnpicklingError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


# The pure-Python unpickler, not the C one: the C unpickler sizes its memo table by the
# largest memo index in the file, so a ten-byte pickle can make it allocate and clear
# tens of GiB; this one keeps the memo in a dict.
class _RefsUnpickler(pickle._Unpickler):
    def find_class(self, module: str, name: str):
        raise _GlobalRefused(f"{module}.{name}")


def _load_refs(path: Path, data: bytes) -> list:
    try:
        # encoding="bytes": the original refs files are Python 2 pickles of byte strings.
        refs = _RefsUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _GlobalRefused as refused:
        raise AnnotationError(path, f"is refused: the pickle asks for the global {refused.name}, which a refs file never "
                                    "holds (only lists, dicts, strings and numbers); nothing in it was run") from None
    except EOFError:
        raise AnnotationError(path, "is not a refcoco refs pickle (the file ends before the pickle does)") from None
    except KeyError as error:  # the pure-Python unpickler's lookup of an opcode it does not know
        code = error.args[0] if error.args else None
        opcode = bytes([code]) if isinstance(code, int) and 0 <= code < 256 else code
        raise AnnotationError(path, f"is not a refcoco refs pickle (unknown opcode {shown(opcode)})") from None
    except Exception as error:  # unpickling garbage raises nearly anything
        message = error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else shown(error.args)
        raise AnnotationError(path, f"is not a refcoco refs pickle ({type(error).__name__}: {message[:200]})") from None
    if not isinstance(refs, list) or (refs and not any(_is_ref(r) for r in refs)):
        raise AnnotationError(path, "is not a refcoco refs pickle: expected a list of refs (dicts with 'ann_id')")
    return refs


def _is_ref(value) -> bool:
    return isinstance(value, dict) and ("ann_id" in value or b"ann_id" in value)


def _text(value):
    """Python 2 pickles (the original refs files) hold byte strings."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _fields(value) -> dict | None:
    """A dict with its byte-string keys decoded (values as they are); None for anything else."""
    return {_text(k): v for k, v in value.items()} if isinstance(value, dict) else None


class _Budget:
    """A pickle may refer to one object any number of times through its memo, so a small file
    can name refs and sentence lists far larger than itself. A real refs file names each ref,
    sentence and field once, and each costs bytes, so the items looked at never exceed the
    file's size in bytes; a file that needs more is refused rather than read for hours."""

    def __init__(self, path: Path, limit: int):
        self.path, self.left = path, limit

    def spend(self, items: int) -> None:
        self.left -= items
        if self.left < 0:
            raise AnnotationError(self.path, "is not a refcoco refs pickle: it repeats shared objects far beyond its size")


def _sentences(value, origin: str, budget: _Budget) -> list[Text]:
    texts = []
    budget.spend(len(value))
    for sentence in value:
        fields = _fields(sentence)
        if fields is not None:
            budget.spend(len(fields))
            sentence = fields.get("sent", fields.get("raw"))
        texts.append(Text(_text(sentence), origin))  # validation rejects a sentence that is not a string
    return texts


def read_refcoco(path: Path, splits: tuple[str, ...] = (), **_) -> Iterator[Record | Rejection]:
    instances_path = path.parent / "instances.json"
    if not instances_path.is_file():
        raise AnnotationError(path, f"a refcoco refs file needs the COCO instances.json beside it; {instances_path} does not exist")
    data = path.read_bytes()
    refs = _load_refs(path, data)
    instances = load_json(instances_path, "refcoco instances")
    if not isinstance(instances, dict) or not all(isinstance(instances.get(k), list) for k in ("images", "annotations")):
        raise AnnotationError(instances_path, "is not a COCO instances file: expected 'images' and 'annotations' lists")
    images = ImageTable(instances_path, instances["images"], "COCO instances")
    categories, rejected_categories = category_names(instances_path, instances)
    boxes = {a["id"]: a.get("bbox") for a in instances["annotations"] if isinstance(a, dict) and is_id(a.get("id"))}
    yield from images.rejected
    yield from rejected_categories

    budget = _Budget(path, len(data))
    for index, raw in enumerate(refs):
        ref = _fields(raw)
        budget.spend(1 + (len(ref) if ref is not None else 0))
        if ref is None or "ann_id" not in ref:
            yield Rejection(f"ref is not a dict with an 'ann_id': {shown(raw)}", "record", f"{path}#refs[{index}]")
            continue
        if splits and _text(ref.get("split")) not in splits:
            continue
        origin = f"{path}#ref_id={ref['ref_id']}" if is_id(ref.get("ref_id")) else f"{path}#refs[{index}]"
        image, rejection = images.find(ref.get("image_id"), origin, "ref")
        if rejection is not None:
            yield rejection
            continue
        ann_id, sentences = ref["ann_id"], ref.get("sentences", [])
        if not (is_id(ann_id) and ann_id in boxes):
            yield Rejection(f"ref points at ann_id {shown(ann_id)}, which {instances_path} does not list", "record", origin,
                            media=image.media)
        elif not isinstance(sentences, list):
            yield Rejection(f"ref's 'sentences' is not a list: {shown(sentences)}", "record", origin, media=image.media)
        else:
            region = Region(boxes[ann_id], _sentences(sentences, origin, budget), lookup(categories, ref.get("category_id")), origin)
            yield Record(image.media, "image", origin, regions=[region], size=image.size)
