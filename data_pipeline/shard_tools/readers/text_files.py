"""Reading annotation files so that one bad byte never loses a whole file.

Text is decoded with `surrogateescape`: bytes that are not UTF-8 survive as lone
surrogates, and validation rejects the single caption that holds them. JSON that parses
into nothing usable (nested too deep for the parser, an integer of more digits than Python
converts) is a bad line of a JSON-lines file, or a whole JSON file that is not of its format.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ..records import AnnotationError

ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}


class BadLine:
    """A line of a JSON-lines file that is not JSON; `reason` says why."""

    def __init__(self, reason: str):
        self.reason = reason


def _json_problem(text: str, where: bool):
    """(the parsed value, None) or (None, why the text is not usable JSON, `where` with the position)."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as error:
        return None, str(error) if where else error.msg
    except RecursionError:
        return None, "nested too deeply"
    except ValueError as error:  # e.g. an integer of more digits than int() converts
        return None, str(error)


def load_json(path: Path, fmt: str):
    value, problem = _json_problem(path.read_text(**ENCODING), where=True)
    if problem is not None:
        raise AnnotationError(path, f"is not valid JSON, so not a {fmt} file ({problem})")
    return value


def json_lines(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed value or a `BadLine`) for every non-blank line."""
    with open(path, newline="\n", **ENCODING) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            value, problem = _json_problem(line, where=False)
            yield number, (BadLine(f"line is not valid JSON ({problem})") if problem is not None else value)


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
