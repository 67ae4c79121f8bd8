"""Grounding accuracy: a predicted box is right when its IoU with the true box is >= 0.5.

Boxes are normalised (cx, cy, w, h) of the same image frame, as the model's box head predicts
and the eval stream gives them.

The reference is a fixed centre box: (0.5, 0.5, mean true w, mean true h) over the eval set,
the best a model could do that ignores both the image and the text but knows the typical box
size. A grounding head that learned anything must beat it.
"""
from __future__ import annotations

import torch

IOU_THRESHOLD = 0.5


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def box_iou(predicted: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """(N,) IoU of each row pair of (N, 4) (cx, cy, w, h) boxes; 0 where both have no area."""
    if predicted.shape != true.shape or predicted.shape[-1] != 4:
        raise ValueError(f"boxes must both be (N, 4), got {tuple(predicted.shape)} and {tuple(true.shape)}")
    a, b = cxcywh_to_xyxy(predicted.float()), cxcywh_to_xyxy(true.float())
    width = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp_min(0)
    height = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp_min(0)
    inter = width * height
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union))


def grounding_accuracy(predicted: torch.Tensor, true: torch.Tensor, threshold: float = IOU_THRESHOLD) -> float:
    if len(true) == 0:
        raise ValueError("grounding accuracy of no boxes")
    return int((box_iou(predicted, true) >= threshold).sum()) / len(true)


def centre_boxes(true: torch.Tensor) -> torch.Tensor:
    """The baseline's prediction for every query: (0.5, 0.5, mean w, mean h) of the true boxes."""
    size = true.float()[:, 2:].mean(dim=0)
    box = torch.cat([torch.tensor([0.5, 0.5]), size])
    return box.expand(len(true), 4)


def grounding_metrics(predicted: torch.Tensor, true: torch.Tensor) -> dict[str, float]:
    predicted, true = predicted.float().cpu(), true.float().cpu()
    return {
        "grounding_acc": grounding_accuracy(predicted, true),
        "centre_baseline_acc": grounding_accuracy(centre_boxes(true), true),
        "mean_iou": float(box_iou(predicted, true).mean()),
        "queries": len(true),
    }
