"""The data spec's `text:` section: the tokenizer, the text length and MLM masking (the data
spec, data_pipeline/spec.py, holds it; the text encoder and the masking read it)."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import setting


@dataclass
class TextSpec:
    # A local tokenizer directory (transformers' save_pretrained layout).
    tokenizer: str = setting(nonempty=True)
    max_tokens: int = setting(40, min=3, max=65536)  # [CLS], at least one token, [SEP]; at most any model's positions
    max_words: int = setting(40, min=1)
    # MLM masking (masking.py).
    mask_prob: float = setting(0.5, min=0, max=1)
    max_masks: int = setting(12, min=1)
    span_prob: float = setting(0.2, min=0, max=1)
    span_max: int = setting(3, min=2)
    whole_word: bool = True
