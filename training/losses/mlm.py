"""Masked language modelling on the masked positions only."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def masked_language_model_loss(
    head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, labels: torch.Tensor,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy over positions whose label is not -100.

    ``positions`` (N, K) long lists each row's masked positions first (the loader's
    ``mlm_positions``, padded with unmasked ones): the vocabulary projection then runs on those
    K columns only, a fraction of the batch, at a shape the host knows. Without it every
    position goes through the head. Selecting by a boolean mask instead would have a
    data-dependent shape, which makes the host wait for the device."""
    hidden, labels = select_positions(hidden, labels, positions)
    logits = head(hidden)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.cross_entropy(logits.flatten(0, 1).to(dtype), labels.flatten(), ignore_index=IGNORE_INDEX)


def select_positions(hidden: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None):
    """The hidden states (N, K, H) and labels (N, K) at each row's listed POSITIONS (N, K); all
    of them without positions."""
    if positions is None:
        return hidden, labels
    return hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1])), labels.gather(1, positions)
