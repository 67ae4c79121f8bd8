"""Masked language modelling on the masked positions only."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def masked_language_model_loss(
    head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy over positions whose label is not -100; the vocabulary projection
    runs on those positions only (a fraction of the batch)."""
    selected = labels != IGNORE_INDEX
    logits = head(hidden[selected])
    return F.cross_entropy(logits.float(), labels[selected])
