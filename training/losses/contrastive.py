"""Image(region/video)-text contrastive loss with multi-positive targets."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.promote_types(tensor.dtype, torch.float32)  # fp32 at least, fp64 stays


def _logits(vision, text, temperature, vision_columns, text_columns, column_valid):
    """(vision-to-text, text-to-vision) similarities / temperature, (R, M), at least in fp32;
    padding columns at the dtype's lowest value, so that every softmax leaves them out."""
    dtype = _compute_dtype(vision)
    vision_columns = vision if vision_columns is None else vision_columns
    text_columns = text if text_columns is None else text_columns
    scale = 1.0 / temperature.to(dtype)
    with torch.autocast(vision.device.type, enabled=False):  # autocast would make them bf16 again
        vision_to_text = vision.to(dtype) @ text_columns.to(dtype).t() * scale
        text_to_vision = text.to(dtype) @ vision_columns.to(dtype).t() * scale
    if column_valid is not None:
        lowest = torch.finfo(dtype).min
        vision_to_text = vision_to_text.masked_fill(~column_valid[None, :], lowest)
        text_to_vision = text_to_vision.masked_fill(~column_valid[None, :], lowest)
    return vision_to_text, text_to_vision


def contrastive_loss(
    vision: torch.Tensor,
    text: torch.Tensor,
    temperature: torch.Tensor,
    positives: torch.Tensor,
    vision_columns: torch.Tensor | None = None,
    text_columns: torch.Tensor | None = None,
    column_valid: torch.Tensor | None = None,
    normaliser: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Symmetric cross-entropy of the rows' samples against the columns', at least in fp32.

    vision, text (R, E) normalised: the rows (this rank's samples); each row's vision is scored
    against every column's text and each row's text against every column's vision.
    ``vision_columns``, ``text_columns`` (M, E): the columns (every rank's samples, gathered),
    by default the rows themselves. positives (R, M) bool: the row's targets, spread evenly over
    them; the relation is symmetric, so the same matrix serves both directions. ``column_valid``
    (M,) bool leaves padding columns out of every softmax. The per-row losses are summed and
    divided by ``normaliser`` (default R): with the rows of a global batch spread over W ranks
    that is (real rows in all) / W, and the mean of the ranks' losses is the global mean.
    """
    dtype = _compute_dtype(vision)
    vision_to_text, text_to_vision = _logits(vision, text, temperature, vision_columns, text_columns, column_valid)
    if column_valid is not None:
        positives = positives & column_valid[None, :]
    targets = positives.to(dtype)
    targets = targets / targets.sum(dim=1, keepdim=True)
    per_row = -(F.log_softmax(vision_to_text, dim=1) * targets).sum(dim=1)
    per_row = per_row - (F.log_softmax(text_to_vision, dim=1) * targets).sum(dim=1)
    normaliser = vision.shape[0] if normaliser is None else normaliser
    return per_row.sum() / (2 * normaliser)


def consistency_loss(
    vision: torch.Tensor,
    text: torch.Tensor,
    temperature: torch.Tensor,
    vision_columns: torch.Tensor | None = None,
    text_columns: torch.Tensor | None = None,
    column_valid: torch.Tensor | None = None,
    normaliser: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """GRIT-VLP's ITC consistency loss (Byun et al., 2022): each row's vision-to-text
    distribution over the columns is trained towards its text-to-vision distribution, and the
    other way round, each target without gradient. Column j is one sample in both directions
    (the gathered visions and texts are in the same order), so for row i both distributions
    rank the same candidates: the image of pair i against the texts, and the text of pair i
    against the images. Arguments as contrastive_loss's; the mean of the two cross-entropies,
    summed over the rows and divided by ``normaliser`` (default R)."""
    vision_to_text, text_to_vision = _logits(vision, text, temperature, vision_columns, text_columns, column_valid)
    log_v2t, log_t2v = F.log_softmax(vision_to_text, dim=1), F.log_softmax(text_to_vision, dim=1)
    per_row = -(log_v2t * log_t2v.detach().exp()).sum(dim=1) - (log_t2v * log_v2t.detach().exp()).sum(dim=1)
    normaliser = vision.shape[0] if normaliser is None else normaliser
    return per_row.sum() / (2 * normaliser)
