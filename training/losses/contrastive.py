"""Image(region/video)-text contrastive loss with multi-positive targets."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(
    vision_features: torch.Tensor, text_features: torch.Tensor, temperature: torch.Tensor, positives: torch.Tensor
) -> torch.Tensor:
    """Symmetric cross-entropy over all pairs of the (global) batch, in fp32.

    vision_features, text_features (N, E) normalised; positives (N, N) bool, row = vision,
    column = text. Each row's target spreads evenly over its positives.
    """
    logits = vision_features.float() @ text_features.float().t() / temperature.float()
    positives = positives.float()
    vision_to_text = positives / positives.sum(dim=1, keepdim=True)
    text_to_vision = positives.t() / positives.t().sum(dim=1, keepdim=True)
    loss_v2t = -(F.log_softmax(logits, dim=1) * vision_to_text).sum(dim=1).mean()
    loss_t2v = -(F.log_softmax(logits.t(), dim=1) * text_to_vision).sum(dim=1).mean()
    return (loss_v2t + loss_t2v) / 2
