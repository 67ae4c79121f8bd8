"""Masked-language-model masking as X²-VLM does it.

About `mask_prob` of the text tokens (at least 1, at most `max_masks`) are chosen; each
choice is, with probability `span_prob`, a span of 2..`span_max` tokens, and is widened
to whole words for WordPiece. Of the chosen tokens 80 % become [MASK], 10 % a random
token, 10 % stay. Unlike the official code, a choice that would push the count past the
cap is passed over rather than cut, so a masked word is always masked whole, and [SEP]
is never a candidate.
"""
from __future__ import annotations

import random

from .text_spec import TextSpec

IGNORE_INDEX = -100


def mask_tokens(ids: list[int], word_start: list[bool], rng: random.Random, spec: TextSpec,
                mask_id: int, random_ids: list[int]) -> tuple[list[int], list[int]]:
    """`ids` is `[CLS] text [SEP]`; `word_start[i]` says whether token i begins a word. The
    masking settings are the data spec's `text` section (mask_prob, max_masks, span_prob,
    span_max, whole_word).

    Returns (masked input ids, labels) of len(ids); labels are IGNORE_INDEX where not masked."""
    n = len(ids)
    candidates = list(range(1, n - 1))
    masked_ids = list(ids)
    labels = [IGNORE_INDEX] * n
    if not candidates:
        return masked_ids, labels
    budget = min(spec.max_masks, max(1, int(round(len(candidates) * spec.mask_prob))))
    rng.shuffle(candidates)
    chosen: set[int] = set()
    for pos in candidates:
        if len(chosen) >= budget:
            break
        if pos in chosen:
            continue
        length = rng.randint(2, spec.span_max) if rng.random() < spec.span_prob else 1
        start, end = pos, min(pos + length, n - 1)
        if spec.whole_word:
            while start > 1 and not word_start[start]:
                start -= 1
            while end < n - 1 and not word_start[end]:
                end += 1
        new = set(range(start, end)) - chosen
        if len(chosen) + len(new) <= budget:
            chosen |= new
    if not chosen:
        # Every candidate word is longer than the budget: mask one token rather than none.
        chosen = {candidates[0]}
    for pos in sorted(chosen):
        labels[pos] = ids[pos]
        draw = rng.random()
        if draw < 0.8:
            masked_ids[pos] = mask_id
        elif draw < 0.9:
            masked_ids[pos] = random_ids[rng.randrange(len(random_ids))]
    return masked_ids, labels
