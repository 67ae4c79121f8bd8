"""ITC: the image (region, video) - text contrastive loss with multi-positive targets, and
ALBEF's momentum-distilled variant where a teacher takes part; the `itc` term of image, region
and video batches. Its figures say how hard the batch's negatives are (`itc_hardness`,
hardness.py) and what the contrastive temperature is (`temperature`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from training.objectives import Objective, register_objective
from training.objectives.gather import gather_rows, pad_rows
from training.objectives.hardness import itc_hardness
from training.objectives.positives import queue_positives


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.promote_types(tensor.dtype, torch.float32)  # fp32 at least, fp64 stays


def similarity_logits(vision, text, temperature, vision_columns, text_columns, column_valid):
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
    vision_to_text, text_to_vision = similarity_logits(vision, text, temperature, vision_columns, text_columns, column_valid)
    if column_valid is not None:
        positives = positives & column_valid[None, :]
    targets = positives.to(dtype)
    targets = targets / targets.sum(dim=1, keepdim=True)
    per_row = -(F.log_softmax(vision_to_text, dim=1) * targets).sum(dim=1)
    per_row = per_row - (F.log_softmax(text_to_vision, dim=1) * targets).sum(dim=1)
    normaliser = vision.shape[0] if normaliser is None else normaliser
    return per_row.sum() / (2 * normaliser)


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


@register_objective
class ContrastiveAlignment(Objective):
    name, terms, kinds = "itc", ("itc",), ("image", "region", "video")

    def forward(self, batch) -> dict:
        p = batch.pairing
        if p.teacher_vision is None:
            itc = contrastive_loss(p.vision.features, p.text.features, p.temperature, p.positives, p.vision_all,
                                   p.text_all, column_valid=p.all_keys.valid, normaliser=p.share)
        else:
            itc = self._distilled(batch)
        hardness = itc_hardness(p.vision.features, p.text.features, p.vision_all.detach(), p.text_all.detach(),
                                p.excluded)
        return {"losses": {"itc": itc},
                "figures": {"itc_hardness": hardness, "temperature": p.temperature.detach().float()}}

    def _distilled(self, batch) -> torch.Tensor:
        """ALBEF's ITC: this rank's rows against the momentum copy's features of every rank's
        batch and of the kind's queue, targets mixed with the momentum copy's similarities; then
        every rank's momentum features go into the queue (the same on every rank)."""
        p, teacher, fields = batch.pairing, batch.teacher, batch.fields
        queue = teacher.queue(batch.name)
        with torch.no_grad():
            teacher_text = teacher.encoders.encode_text(fields["text_ids"], fields["text_mask"])
            image_index = batch.image_index
            image_id = fields["sample_ids"] if image_index is None else fields["sample_ids"][image_index]
            width = p.teacher_vision.features.shape[1]
            gathered = gather_rows(pad_rows(torch.cat([p.teacher_vision.features, teacher_text.features], 1), p.rows))
            identity = gather_rows(pad_rows(torch.stack([image_id, p.keys.text], 1), p.rows))
            # New tensors: the loss keeps them for backward while the queue changes in place.
            vision_columns = torch.cat([gathered[:, :width].to(queue.vision.dtype), queue.vision])
            text_columns = torch.cat([gathered[:, width:].to(queue.text.dtype), queue.text])
            in_queue = queue_positives(image_id, p.keys.text, queue, self.config.same_text_positive)
            column_valid = torch.cat([p.all_keys.valid, queue.valid])
        itc = distilled_contrastive_loss(p.vision.features, p.text.features, p.teacher_vision.features,
                                         teacher_text.features, vision_columns, text_columns, p.temperature,
                                         torch.cat([p.positives, in_queue], 1), column_valid, teacher.alpha, p.share)
        queue.push(gathered[:, :width], gathered[:, width:], identity[:, 0], identity[:, 1], p.all_keys.valid)
        return itc
