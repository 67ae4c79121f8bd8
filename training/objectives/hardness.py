"""How hard a batch's negatives are: the figures that show what grouped mini-batches
(data.grouping) do. Computed on the device from the similarities the losses already form,
without a host synchronisation; the trainer sums them with the other figures of the step.

- ``itm_neg_sim``: the mean cosine similarity of the hard negatives ITM drew.
- ``itc_hardness``: over the rows, the mean of the highest cosine similarity to a column that
  is not a positive (the in-batch ITC negative the softmax weighs most), both directions.

A rank with no row to measure gives NaN, which the trainer's mean over ranks leaves out.
"""
from __future__ import annotations

import torch


def _mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    valid = valid.float()
    return (values.float() * valid).sum() / valid.sum()  # 0 / 0 = NaN where nothing was measured


@torch.no_grad()
def drawn_similarity(logits: torch.Tensor, drawn: torch.Tensor, valid: torch.Tensor,
                     temperature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the cosine similarities of the drawn columns over the valid rows, how many rows):
    LOGITS (N, M) = cosine / TEMPERATURE as the sampler saw them, DRAWN (N,) its columns."""
    picked = logits.float().gather(1, drawn[:, None]).squeeze(1) * temperature.float()
    valid = valid & torch.isfinite(picked)
    return torch.where(valid, picked, 0.0).sum(), valid.float().sum()


def itm_negative_similarity(*pairs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The mean over directions of drawn_similarity's (sum, count) PAIRS."""
    total = sum(p[0] for p in pairs)
    count = sum(p[1] for p in pairs)
    return total / count


@torch.no_grad()
def itc_hardness(vision: torch.Tensor, text: torch.Tensor, vision_columns: torch.Tensor,
                 text_columns: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
    """Mean over this rank's rows, both directions, of the top cosine similarity to a column that
    is not EXCLUDED (R, M: positives and padding). Features normalised."""
    scores = torch.cat([vision.float() @ text_columns.float().t(), text.float() @ vision_columns.float().t()])
    excluded = torch.cat([excluded, excluded])
    top = scores.masked_fill(excluded, float("-inf")).max(dim=1).values
    return _mean(torch.where(torch.isfinite(top), top, 0.0), torch.isfinite(top))
