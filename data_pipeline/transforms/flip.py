"""Horizontal flip that keeps captions true.

X²-VLM flips images whose captions say "left" or "right", which teaches the model the
wrong side. Here a flip either swaps those words (`swap`), or is not done for such a
sample (`skip`); `off` never flips.
"""
from __future__ import annotations

import random
import re

# A corpus's `options.flip`.
FLIP_MODES = ("swap", "skip", "off")
# English words, and the Chinese characters for left and right (左边, 左上角, 从左到右, 向左).
_SIDE = re.compile(r"\b(left|right)|([左右])", re.IGNORECASE)
_SWAP = {"left": "right", "right": "left", "左": "右", "右": "左"}


def mentions_side(text: str) -> bool:
    return _SIDE.search(text) is not None


def _swap_word(match: re.Match) -> str:
    if match.group(2):
        return _SWAP[match.group(2)]
    word = match.group(1)
    swapped = _SWAP[word.lower()]
    if word.isupper():
        return swapped.upper()
    if word[0].isupper():
        return swapped.capitalize()
    return swapped


def swap_sides(text: str) -> str:
    """'left' <-> 'right', also as the start of 'leftmost', 'rightward', keeping case; '左' <-> '右'."""
    return _SIDE.sub(_swap_word, text)


def decide_flip(rng: random.Random, texts: list[str], mode: str, probability: float = 0.5) -> bool:
    # The draw happens in every mode so that the rest of the sample's randomness does not
    # depend on the flip mode.
    wanted = rng.random() < probability
    if mode == "off" or not wanted:
        return False
    if mode == "skip" and any(mentions_side(t) for t in texts):
        return False
    return True


def flipped_texts(texts: list[str], flip: bool, mode: str) -> list[str]:
    return [swap_sides(t) for t in texts] if flip and mode == "swap" else texts
