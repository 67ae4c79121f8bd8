"""The generic routes: JSONL or CSV/TSV lines of media path plus caption(s), and video lists.

jsonl:        {"image": "a/b.jpg", "captions": ["...", ...]}   ("caption" or "text" for one)
csv / tsv:    a header row; one caption per row, rows of the same image merge
              (CC3M style); `.tsv` files are tab separated
video-jsonl:  {"video": "x.mp4", "captions": [...], "start": 1.5, "end": 9.0}  (start/end optional)
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

from ..records import AnnotationError, Record, Rejection, Text
from ..validate import clip_problem
from ..values import shown
from .text_files import ENCODING, BadLine, caption_list, first_key, json_lines

IMAGE_FIELDS = ("image", "path", "file_name", "filename", "filepath")
VIDEO_FIELDS = ("video", "path", "file_name", "filename", "filepath")
CAPTION_FIELDS = ("captions", "caption", "text", "title")


def _line_records(path: Path, fmt: str, kind: str, path_fields: tuple[str, ...]) -> Iterator[Record | Rejection]:
    lines = objects = 0
    for number, entry in json_lines(path):
        lines += 1
        origin = f"{path}:{number}"
        if isinstance(entry, BadLine):
            yield Rejection(entry.reason, "record", origin)
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
            start, end = entry.get("start"), entry.get("end")
            problem = clip_problem(start, end)  # against the video's duration once it is probed
            if problem:
                yield Rejection(problem, "record", origin, media=media)
                continue
            record.start, record.end = start, end
        yield record
    if lines and not objects:
        # Not one bad line but the wrong file: a mistake to stop at, not thousands of rejections.
        raise AnnotationError(path, f"no line is a JSON object, so it is not a {fmt} file")


def read_jsonl(path: Path, **_) -> Iterator[Record | Rejection]:
    return _line_records(path, "jsonl", "image", IMAGE_FIELDS)


def read_video_jsonl(path: Path, **_) -> Iterator[Record | Rejection]:
    return _line_records(path, "video-jsonl", "video", VIDEO_FIELDS)


class _CountedLines:
    """The lines of a file, counting those read: a row the csv reader fails on is not in its `line_num`."""

    def __init__(self, lines):
        self.lines, self.count = lines, 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.count += 1
        return line


def read_csv(path: Path, **_) -> Iterator[Record | Rejection]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", **ENCODING) as f:
        lines = _CountedLines(f)
        reader = csv.DictReader(lines, delimiter=delimiter)
        try:
            header = reader.fieldnames or []
        except csv.Error as error:
            raise AnnotationError(path, f"is not a readable csv file (header: {error})") from None
        media_column = next((c for c in IMAGE_FIELDS if c in header), None)
        caption_column = next((c for c in CAPTION_FIELDS if c in header), None)
        if media_column is None or caption_column is None:
            raise AnnotationError(path, f"a csv file needs a header row naming an image column ({', '.join(IMAGE_FIELDS)}) "
                                        f"and a caption column ({', '.join(CAPTION_FIELDS)}); the header is {shown(header)}")
        while True:
            read = lines.count
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                # The reader drops the bad row (a field over the size limit, ...) and goes on;
                # should it ever stop advancing, the file is not csv that can be read.
                if lines.count == read:
                    raise AnnotationError(path, f"is not a readable csv file (line {read + 1}: {error})") from None
                yield Rejection(f"row is not readable csv ({error})", "record", f"{path}:{lines.count}")
                continue
            origin = f"{path}:{lines.count}"
            media = row.get(media_column)
            if not media:
                yield Rejection(f"empty {media_column} column", "record", origin)
                continue
            yield Record(media, "image", origin, [Text(row.get(caption_column) or "", origin)])
