"""Captioning (language modelling): each position of the causal decoder predicts the next token
of its text, [CLS] predicting the first word and the last word predicting [SEP]; the `lm` term
of image batches (optional: weight 0 unless configured)."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from training.objectives import Objective, register_objective
from training.objectives.mlm import IGNORE_INDEX


def next_token_labels(text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """(N, L) long: at position t the id at t + 1 where that is a real token, else -100 (the
    last position and every position whose next one is padding). Fixed shape, no host read."""
    following = text_ids[:, 1:].masked_fill(~text_mask[:, 1:].bool(), IGNORE_INDEX)
    return torch.cat([following, following.new_full((text_ids.shape[0], 1), IGNORE_INDEX)], dim=1)


def captioning_loss(head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, text_ids: torch.Tensor,
                    text_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the real tokens after [CLS]. ``hidden`` (N, L, H) is
    the causal decoder's output (X2VLM.decode), ``head`` the tied MLM head."""
    logits = head(hidden)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    labels = next_token_labels(text_ids, text_mask)
    return F.cross_entropy(logits.flatten(0, 1).to(dtype), labels.flatten(), ignore_index=IGNORE_INDEX)


@register_objective
class Captioning(Objective):
    name, terms, kinds, optional = "lm", ("lm",), ("image",), ("lm",)

    def forward(self, batch) -> dict:
        vision, fields = batch.vision, batch.fields
        hidden = batch.model.decode(vision.tokens, vision.mask, fields["text_ids"], fields["text_mask"])
        return {"losses": {"lm": captioning_loss(batch.model.mlm_head, hidden, fields["text_ids"],
                                                 fields["text_mask"])}, "figures": {}}
