"""Image(region/video)-text matching with hard negatives.

Negatives are drawn in proportion to softmax(similarity / temperature) over the candidates
that are not positives, for every sample at once with ``torch.multinomial`` on the device:
no per-sample loop and no host synchronisation. Sampling weights and the loss are fp32
(X²-VLM's fp16 weights produced NaNs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_hard_negatives(
    logits: torch.Tensor, positives: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One negative column per row.

    logits (N, M) similarity / temperature; positives (N, M) bool. Returns the drawn column
    (N,) long and whether the row had any negative to draw from (N,) bool. A row whose
    candidates are all positives, or not finite (a diverged model), draws an arbitrary column;
    its ``valid`` is False and the caller gives that pair zero weight, so that a non-finite
    loss reaches the trainer's guard instead of failing inside the sampler.
    """
    with torch.no_grad():
        logits = logits.float()
        drawable = ~positives & torch.isfinite(logits)
        logits = logits.masked_fill(~drawable, float("-inf"))
        valid = drawable.any(dim=1)
        logits = torch.where(valid[:, None], logits, torch.zeros_like(logits))
        probabilities = F.softmax(logits, dim=1)
        return torch.multinomial(probabilities, 1, generator=generator).squeeze(1), valid


def matching_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                  normaliser: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted cross-entropy of the ITM head's 2-way logits (label 1 = match), summed and
    divided by ``normaliser``: by default the weights' sum (a weighted mean); pairs computed on
    W ranks pass (the weights' sum over all ranks) / W, so that the ranks' mean is the global one."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    per_pair = F.cross_entropy(logits.to(dtype), labels, reduction="none")
    weights = weights.to(dtype)
    return (per_pair * weights).sum() / (weights.sum() if normaliser is None else normaliser)
