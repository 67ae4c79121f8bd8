"""GRIT-VLP's ITC consistency loss (`itc_cons`, optional: weight 0 unless configured; GRIT-VLP's
code weighs it 0.2), on image, region and video batches."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from training.objectives import Objective, register_objective
from training.objectives.itc import similarity_logits


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
    vision_to_text, text_to_vision = similarity_logits(vision, text, temperature, vision_columns, text_columns, column_valid)
    log_v2t, log_t2v = F.log_softmax(vision_to_text, dim=1), F.log_softmax(text_to_vision, dim=1)
    per_row = -(log_v2t * log_t2v.detach().exp()).sum(dim=1) - (log_t2v * log_v2t.detach().exp()).sum(dim=1)
    normaliser = vision.shape[0] if normaliser is None else normaliser
    return per_row.sum() / (2 * normaliser)


@register_objective
class ContrastiveConsistency(Objective):
    name, terms, kinds, optional = "itc_cons", ("itc_cons",), ("image", "region", "video"), ("itc_cons",)

    def forward(self, batch) -> dict:
        # The batch's own features (beside momentum distillation too: not the queue).
        p = batch.pairing
        loss = consistency_loss(p.vision.features, p.text.features, p.temperature, p.vision_all, p.text_all,
                                column_valid=p.all_keys.valid, normaliser=p.share)
        return {"losses": {"itc_cons": loss}, "figures": {}}
