"""Reading annotation files so that one bad byte never loses a whole file.

Text is decoded with `surrogateescape`: bytes that are not UTF-8 survive as lone
surrogates, and validation rejects the single caption that holds them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ..records import AnnotationError

ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}


def load_json(path: Path, fmt: str):
    try:
        return json.loads(path.read_text(**ENCODING))
    except json.JSONDecodeError as error:
        raise AnnotationError(path, f"is not valid JSON, so not a {fmt} file ({error})") from None


def json_lines(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed value or the JSONDecodeError) for every non-blank line."""
    with open(path, newline="\n", **ENCODING) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                yield number, error


def first_key(entry: dict, names: tuple[str, ...]):
    for name in names:
        if name in entry:
            return entry[name]
    return None


def caption_list(value) -> list[str] | None:
    """A caption field as a list of strings: a string is one caption; None when it is neither."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None
