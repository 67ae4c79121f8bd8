"""Sample keys and tar member names.

webdataset groups tar members into samples by the part of the member name before the
first dot, and a member name is a path inside the archive. So a key must hold no dot and
no path separator; everything else a source id may contain is mapped to `_`.
"""
from __future__ import annotations

import re

_NOT_KEY_CHAR = re.compile(r"[^A-Za-z0-9_-]")
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def sanitise_id(source_id: str) -> str:
    """A source id (a media path without its extension) as a key part: letters, digits, `-`, `_`."""
    return _NOT_KEY_CHAR.sub("_", source_id) or "_"


def media_id(media_path: str) -> str:
    """The id of a media file: its path relative to the media root, without the extension."""
    head, _, name = media_path.replace("\\", "/").rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{head}/{stem}" if head else stem


def sample_key(prefix: str, media_path: str) -> str:
    return f"{prefix}_{sanitise_id(media_id(media_path))}"


def check_prefix(prefix: str) -> str | None:
    """Why `prefix` cannot start keys and shard names, or None when it can."""
    if not _PREFIX.match(prefix):
        return f"--prefix {prefix!r} must start with a letter or digit and hold only letters, digits, '-' and '_'"
    return None
