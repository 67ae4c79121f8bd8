"""Caption cleaning as X²-VLM does it before tokenising: lower case, punctuation to
spaces, hyphens and slashes split words, whitespace collapsed, at most `max_words` words.

The punctuation X²-VLM drops has full-width counterparts in Chinese and Japanese text
(，。！？：；、“”‘’（）《》「」【】 and the ideographic space); they are dropped the same way,
so that a CJK caption loses its punctuation as an English one does. CJK text has no spaces
between words: a run of CJK characters counts as one word for `max_words` (the text length
is bounded by the loader's `max_tokens` anyway), and nothing is inserted between the
characters, which would change what a SentencePiece (XLM-R) tokenizer sees."""
from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"([,.'!?\"()*#:;~，。！？：；、“”‘’（）《》「」【】\u3000])")
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
        raise BadText(f"text {caption!r} is empty after cleaning (punctuation and spaces only)")
    return text
