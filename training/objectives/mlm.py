"""MLM: masked language modelling on the masked positions only, the masked texts fused with
the batch's vision tokens; with a teacher (momentum distillation, `mlm: true`), ALBEF's targets
mixed with the momentum copy's predictions. The `mlm` term of image, region and video batches."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from training.objectives import Objective, register_objective

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


@register_objective
class MaskedLanguageModelling(Objective):
    name, terms, kinds = "mlm", ("mlm",), ("image", "region", "video")

    def forward(self, batch) -> dict:
        p, fields, model = batch.pairing, batch.fields, batch.model
        masked_hidden = model.text_hidden(fields["mlm_ids"], fields["text_mask"])
        fused = model.fuse(p.vision.tokens, p.vision.mask, masked_hidden, fields["text_mask"])
        if p.teacher_vision is not None and self.config.momentum_distillation.mlm:
            loss = self._distilled(batch, fused)
        else:
            loss = masked_language_model_loss(model.mlm_head, fused, fields["mlm_labels"], fields.get("mlm_positions"))
        return {"losses": {"mlm": loss}, "figures": {}}

    def _distilled(self, batch, fused: torch.Tensor) -> torch.Tensor:
        """ALBEF's MLM: the masked tokens' targets mixed with the momentum copy's predictions,
        fused with its own vision tokens."""
        fields, teacher, positions = batch.fields, batch.teacher, batch.fields.get("mlm_positions")
        teacher_vision, momentum = batch.pairing.teacher_vision, batch.teacher.encoders
        with torch.no_grad():
            teacher_hidden = momentum.text_hidden(fields["mlm_ids"], fields["text_mask"])
            teacher_fused = momentum.fuse(teacher_vision.tokens, teacher_vision.mask, teacher_hidden,
                                          fields["text_mask"])
            teacher_fused, _ = select_positions(teacher_fused, fields["mlm_labels"], positions)
            teacher_logits = momentum.mlm_head(teacher_fused)
        hidden, labels = select_positions(fused, fields["mlm_labels"], positions)
        return distilled_mlm_loss(batch.model.mlm_head(hidden), teacher_logits, labels, teacher.alpha)
