"""Checks on single values read from annotation files, which may hold anything JSON (or a
refs pickle) can: ids that are lists, NaN or booleans, numbers as strings, integers of
thousands of digits, structures nested thousands deep."""
from __future__ import annotations

import reprlib



class _ShortRepr(reprlib.Repr):
    def __init__(self):
        super().__init__()
        self.maxstring = self.maxother = self.maxlong = 80

    def repr_int(self, x, level):
        # repr() of an integer past 4300 digits raises; its size is all a reason needs.
        return super().repr_int(x, level) if x.bit_length() <= 256 else f"<an integer of {x.bit_length()} bits>"


_SHOWN = _ShortRepr()

# Ids are integers or strings; 64-bit integers cover every corpus and keep a huge integer
# (which `str()` refuses past 4300 digits) out of origins and file names.
_ID_RANGE = range(-(2 ** 63), 2 ** 64)
MAX_SIDE = 2 ** 31  # beyond any image; a larger width or height is not a size


def shown(value) -> str:
    """A short repr of any value for a rejection reason: depth, length and digits bounded."""
    return _SHOWN.repr(value)


def is_id(value) -> bool:
    """An image, annotation, category or ref id: an integer (not a bool) or a non-empty string.
    Floats are refused: 1.0 would silently match id 1, and NaN matches nothing."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value in _ID_RANGE
    return isinstance(value, str) and value != ""


def lookup(mapping: dict, key):
    """mapping[key] for an id, None for anything that is not one (a list would not even hash)."""
    return mapping.get(key) if is_id(key) else None


def is_side(value) -> bool:
    """A width or height in pixels."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_SIDE


def image_size(entry: dict) -> tuple[tuple[int, int] | None, str | None]:
    """(the (width, height) an image entry claims, None when it gives none; or why it is malformed)."""
    if "width" not in entry and "height" not in entry:
        return None, None
    width, height = entry.get("width"), entry.get("height")
    if not (is_side(width) and is_side(height)):
        return None, f"malformed width / height {shown(width)} / {shown(height)}: expected positive integers"
    return (width, height), None
