"""The causal mode of the text and fusion layers: X²-VLM's one BERT stack as an image-grounded
decoder (BLIP's decoder; X²-VLM's captioning fine-tune). Each text position attends to itself and
the positions before it, the fusion layers still cross-attend to every vision token, and the
(tied) MLM head reads the next token off each position. The same weights serve the
bidirectional encoder (ITC, ITM, MLM) and the decoder; only the self-attention mask differs."""
from __future__ import annotations

import torch


def causal_mask(text_mask: torch.Tensor) -> torch.Tensor:
    """(N, L) padding mask -> (N, 1, L, L) bool, True where query position i may attend to key j:
    j <= i and j is a real token. Every row keeps position 0 (the [CLS] that starts each text), so
    no row is empty, not even a padding position's."""
    length = text_mask.shape[1]
    lower = torch.ones(length, length, dtype=torch.bool, device=text_mask.device).tril()
    return text_mask.bool()[:, None, None, :] & lower[None, None]
