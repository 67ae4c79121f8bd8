"""Box regression for region texts: L1 plus generalised IoU on (cx, cy, w, h) boxes, the box
head reading each text fused with its whole image; the `bbox` and `giou` terms of region
batches."""
from __future__ import annotations

import torch

from training.objectives import Objective, register_objective

_EPS = 1e-7


def _corners(boxes: torch.Tensor) -> torch.Tensor:
    centre, size = boxes[:, :2], boxes[:, 2:]
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def generalized_iou(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """GIoU of each predicted box with its own target (paired, not all pairs): (R,)."""
    a, b = _corners(predicted.float()), _corners(target.float())
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    inter_size = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp_min(0)
    intersection = inter_size[:, 0] * inter_size[:, 1]
    union = area_a + area_b - intersection
    iou = intersection / union.clamp_min(_EPS)
    hull_size = torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])
    hull = hull_size[:, 0] * hull_size[:, 1]
    return iou - (hull - union) / hull.clamp_min(_EPS)


def box_losses(predicted: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1 summed over the 4 coordinates, 1 - GIoU), each averaged over boxes."""
    count = predicted.shape[0]
    l1 = (predicted.float() - target.float()).abs().sum() / count
    giou = (1 - generalized_iou(predicted, target)).sum() / count
    return l1, giou


@register_objective
class BoxRegression(Objective):
    name, terms, kinds = "box", ("bbox", "giou"), ("region",)

    def forward(self, batch) -> dict:
        box = batch.model.predict_box(batch.image_tokens[batch.image_index], batch.text)
        bbox, giou = box_losses(box, batch.fields["boxes"])
        return {"losses": {"bbox": bbox, "giou": giou}, "figures": {}}
