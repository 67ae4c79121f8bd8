"""The generic routes: JSONL or CSV/TSV lines of media path plus caption(s), and video lists.

jsonl:        {"image": "a/b.jpg", "captions": ["...", ...]}   ("caption" or "text" for one)
csv / tsv:    a header row; one caption per row, rows of the same image merge
              (CC3M style); `.tsv` files are tab separated
video-jsonl:  {"video": "x.mp4", "captions": [...], "start": 1.5, "end": 9.0}  (start/end optional)
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

from ..records import AnnotationError, Record, Rejection, Text
from .text_files import ENCODING, caption_list, first_key, json_lines

IMAGE_FIELDS = ("image", "path", "file_name", "filename", "filepath")
VIDEO_FIELDS = ("video", "path", "file_name", "filename", "filepath")
CAPTION_FIELDS = ("captions", "caption", "text", "title")


def _line_records(path: Path, fmt: str, kind: str, path_fields: tuple[str, ...]) -> Iterator[Record | Rejection]:
    lines = objects = 0
    for number, entry in json_lines(path):
        lines += 1
        origin = f"{path}:{number}"
        if isinstance(entry, json.JSONDecodeError):
            yield Rejection(f"line is not valid JSON ({entry.msg})", "record", origin)
            continue
        if not isinstance(entry, dict):
            yield Rejection("line is not a JSON object", "record", origin)
            continue
        objects += 1
        media = first_key(entry, path_fields)
        if not isinstance(media, str) or not media:
            yield Rejection(f"no {kind} path (one of the keys {', '.join(path_fields)})", "record", origin)
            continue
        captions = caption_list(first_key(entry, CAPTION_FIELDS))
        if captions is None:
            yield Rejection(f"no captions (a string or list of strings under one of {', '.join(CAPTION_FIELDS)})",
                            "record", origin, media=media)
            continue
        record = Record(media, kind, origin, [Text(c, origin) for c in captions])
        if kind == "video":
            clip = {name: entry.get(name) for name in ("start", "end")}
            if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))) for v in clip.values()):
                yield Rejection(f"start / end must be numbers of seconds, got {clip}", "record", origin, media=media)
                continue
            record.start, record.end = clip["start"], clip["end"]
        yield record
    if lines and not objects:
        # Not one bad line but the wrong file: a mistake to stop at, not thousands of rejections.
        raise AnnotationError(path, f"no line is a JSON object, so it is not a {fmt} file")


def read_jsonl(path: Path, **_) -> Iterator[Record | Rejection]:
    return _line_records(path, "jsonl", "image", IMAGE_FIELDS)


def read_video_jsonl(path: Path, **_) -> Iterator[Record | Rejection]:
    return _line_records(path, "video-jsonl", "video", VIDEO_FIELDS)


def read_csv(path: Path, **_) -> Iterator[Record | Rejection]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", **ENCODING) as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        media_column = next((c for c in IMAGE_FIELDS if c in header), None)
        caption_column = next((c for c in CAPTION_FIELDS if c in header), None)
        if media_column is None or caption_column is None:
            raise AnnotationError(path, f"a csv file needs a header row naming an image column ({', '.join(IMAGE_FIELDS)}) "
                                        f"and a caption column ({', '.join(CAPTION_FIELDS)}); the header is {header}")
        try:
            for row in reader:
                origin = f"{path}:{reader.line_num}"
                media = row.get(media_column)
                if not media:
                    yield Rejection(f"empty {media_column} column", "record", origin)
                    continue
                yield Record(media, "image", origin, [Text(row.get(caption_column) or "", origin)])
        except csv.Error as error:
            raise AnnotationError(path, f"is not a readable csv file (line {reader.line_num}: {error})") from None
