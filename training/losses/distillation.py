"""ALBEF's momentum distillation: feature queues with identities, distilled ITC and MLM.

The queue of a batch kind holds the momentum model's vision and text features of earlier
batches, from every rank, as extra contrastive candidates. Each entry keeps its identity: the
id of its image (a hash of the sample key, the same wherever and whenever that image comes
again), the hash of its text and whether it is a real row. An entry of the same image as a
row, or (``same_text``) with the same text, is a positive of that row, never a negative, as
in the in-batch multi-positive targets (positives.py).

Everything runs at fixed shapes: a queue is a ring buffer whose write position is a Python
integer that advances by the same amount on every rank, and entries that are padding stay in
it, marked invalid. Nothing reads a device value on the host.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from training.losses.mlm import IGNORE_INDEX


class FeatureQueue:
    """A ring buffer of (vision, text) feature pairs with their identities; the same on every
    rank (each push is of every rank's rows, gathered)."""

    def __init__(self, size: int, dim: int, device: torch.device | str = "cpu"):
        self.size = size
        self.vision = torch.zeros(size, dim, device=device)
        self.text = torch.zeros(size, dim, device=device)
        self.image_id = torch.zeros(size, dtype=torch.long, device=device)
        self.text_hash = torch.zeros(size, dtype=torch.long, device=device)
        self.valid = torch.zeros(size, dtype=torch.bool, device=device)  # empty slots are invalid
        self.position = 0  # where the next push writes

    def to(self, device: torch.device | str) -> FeatureQueue:
        for name in ("vision", "text", "image_id", "text_hash", "valid"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def push(self, vision: torch.Tensor, text: torch.Tensor, image_id: torch.Tensor, text_hash: torch.Tensor,
             valid: torch.Tensor) -> None:
        """Writes N entries after the last ones, overwriting the oldest (in place: callers that
        built a tensor from the queue for autograd hold a copy, see ``columns``)."""
        count = vision.shape[0]
        if count > self.size:
            raise ValueError(f"{count} entries per push exceed the queue size {self.size}")
        index = torch.arange(self.position, self.position + count, device=self.valid.device) % self.size
        self.vision.index_copy_(0, index, vision.detach().to(self.vision.dtype))
        self.text.index_copy_(0, index, text.detach().to(self.text.dtype))
        self.image_id.index_copy_(0, index, image_id)
        self.text_hash.index_copy_(0, index, text_hash)
        self.valid.index_copy_(0, index, valid)
        self.position = (self.position + count) % self.size

    def state_dict(self) -> dict:
        # Copies: the queue goes on changing in place after the state is taken.
        return {**{name: getattr(self, name).to("cpu", copy=True)
                   for name in ("vision", "text", "image_id", "text_hash", "valid")}, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if state["vision"].shape != self.vision.shape:
            raise ValueError(f"a saved queue of shape {tuple(state['vision'].shape)} does not fit "
                             f"{tuple(self.vision.shape)} (model.losses.momentum_distillation.queue_size or "
                             f"embed_dim changed)")
        for name in ("vision", "text", "image_id", "text_hash", "valid"):
            getattr(self, name).copy_(state[name])
        self.position = int(state["position"])


def queue_positives(image_id: torch.Tensor, text_hash: torch.Tensor, queue: FeatureQueue,
                    same_text: bool) -> torch.Tensor:
    """(R, Q) bool: the queue entries that are positives of each row (same image, or the same
    text where ``same_text``); an invalid entry is never a positive."""
    positive = image_id[:, None] == queue.image_id[None, :]
    if same_text:
        positive |= text_hash[:, None] == queue.text_hash[None, :]
    return positive & queue.valid[None, :]


def _soft_targets(logits: torch.Tensor, positives: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - alpha) x the positives spread evenly + alpha x softmax(LOGITS); logits of invalid
    columns are already the dtype's lowest value, so they get no weight."""
    truth = positives.to(logits.dtype)
    truth = truth / truth.sum(dim=1, keepdim=True)
    return (1 - alpha) * truth + alpha * F.softmax(logits, dim=1)


def distilled_contrastive_loss(
    vision: torch.Tensor,
    text: torch.Tensor,
    momentum_vision: torch.Tensor,
    momentum_text: torch.Tensor,
    vision_columns: torch.Tensor,
    text_columns: torch.Tensor,
    temperature: torch.Tensor,
    positives: torch.Tensor,
    column_valid: torch.Tensor,
    alpha: float,
    normaliser: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """ALBEF's ITC with momentum distillation, at least in fp32.

    vision, text (R, E): this rank's rows from the model being trained. momentum_vision,
    momentum_text (R, E): the same rows from the momentum model. vision_columns, text_columns
    (M, E): the candidates, all from the momentum model (every rank's batch, then the queue),
    without gradient. positives (R, M) bool, column_valid (M,) bool. Each direction's targets
    are (1 - alpha) x the positives spread evenly + alpha x the momentum rows' softmax over the
    same candidates; the loss is the cross-entropy against them, both directions, per-row
    losses summed and divided by 2 x ``normaliser`` (default R), as ``contrastive_loss``.
    """
    dtype = torch.promote_types(vision.dtype, torch.float32)
    scale = 1.0 / temperature.to(dtype)
    lowest = torch.finfo(dtype).min
    invalid = ~column_valid[None, :]
    positives = positives & column_valid[None, :]
    vision_columns, text_columns = vision_columns.detach().to(dtype), text_columns.detach().to(dtype)
    with torch.autocast(vision.device.type, enabled=False):
        vision_to_text = (vision.to(dtype) @ text_columns.t() * scale).masked_fill(invalid, lowest)
        text_to_vision = (text.to(dtype) @ vision_columns.t() * scale).masked_fill(invalid, lowest)
        with torch.no_grad():
            scale_m = scale.detach()
            targets_v2t = _soft_targets(
                (momentum_vision.to(dtype) @ text_columns.t() * scale_m).masked_fill(invalid, lowest), positives, alpha)
            targets_t2v = _soft_targets(
                (momentum_text.to(dtype) @ vision_columns.t() * scale_m).masked_fill(invalid, lowest), positives, alpha)
    per_row = -(F.log_softmax(vision_to_text, dim=1) * targets_v2t).sum(dim=1)
    per_row = per_row - (F.log_softmax(text_to_vision, dim=1) * targets_t2v).sum(dim=1)
    normaliser = vision.shape[0] if normaliser is None else normaliser
    return per_row.sum() / (2 * normaliser)


def distilled_mlm_loss(logits: torch.Tensor, momentum_logits: torch.Tensor, labels: torch.Tensor,
                       alpha: float) -> torch.Tensor:
    """(1 - alpha) x cross-entropy with the masked tokens + alpha x cross-entropy with the
    momentum model's predicted distribution, averaged over the positions whose label is not
    -100 (ALBEF's MLM distillation). logits, momentum_logits (..., V); labels (...)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logits, labels = logits.flatten(0, -2).to(dtype), labels.flatten()
    log_probabilities = F.log_softmax(logits, dim=-1)
    hard = F.nll_loss(log_probabilities, labels, ignore_index=IGNORE_INDEX, reduction="none")
    soft = -(log_probabilities * F.softmax(momentum_logits.flatten(0, -2).to(dtype), dim=-1)).sum(dim=-1)
    masked = (labels != IGNORE_INDEX).to(dtype)
    per_position = ((1 - alpha) * hard + alpha * soft) * masked
    return per_position.sum() / masked.sum().clamp_min(1)
