"""Caption cleaning as X²-VLM does it before tokenising: lower case, punctuation to
spaces, hyphens and slashes split words, whitespace collapsed, at most `max_words` words."""
from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"([,.'!?\"()*#:;~])")
_SPACES = re.compile(r"\s{2,}")


class BadText(ValueError):
    pass


def clean_caption(caption: str, max_words: int) -> str:
    text = _PUNCTUATION.sub(" ", caption.lower())
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person")
    text = _SPACES.sub(" ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    if len(words) > max_words:
        text = " ".join(words[:max_words])
    if not text.strip():
        raise BadText(f"caption is empty after cleaning: {caption!r}")
    return text
