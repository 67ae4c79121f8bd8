"""Batches on their way to a bf16 model: pixels stay uint8 and boxes (targets) stay float32,
so the box losses see the box the loader made, not its bf16 rounding."""
from __future__ import annotations

import torch

import training.objectives.box as box
from tiny_batches import region_batch
from training.engine.trainer import move_batch
from training.model import create_model
from training.tasks.task import Task

# 1/3 + 1/4096 in float32: bf16 keeps 8 significant bits and rounds it to 0.333984375.
UNREPRESENTABLE = torch.tensor(1 / 3 + 1 / 4096, dtype=torch.float32)


def test_bf16_cannot_hold_the_test_box():
    assert UNREPRESENTABLE.to(torch.bfloat16).float() != UNREPRESENTABLE


def test_move_batch_keeps_pixels_uint8_and_boxes_float32():
    batch = {**region_batch(), "keys": ["a", "b"]}
    batch["boxes"][0, 0] = UNREPRESENTABLE
    moved = move_batch(batch, torch.device("cpu"))
    assert "keys" not in moved  # host-side entries stay behind
    assert moved["images"].dtype == torch.uint8 and torch.equal(moved["images"], batch["images"])
    assert moved["boxes"].dtype == torch.float32 and torch.equal(moved["boxes"], batch["boxes"])
    assert moved["patch_mask"].dtype == torch.bool and moved["text_ids"].dtype == torch.int64


def test_box_loss_of_a_bf16_model_sees_the_float32_box(monkeypatch):
    torch.manual_seed(0)
    model = create_model("tiny", load_pretrained=False).to(torch.bfloat16)
    batch = region_batch()
    batch["boxes"][0, 0] = UNREPRESENTABLE
    seen = {}
    box_losses = box.box_losses

    def noting_targets(predicted, target):
        seen["predicted"], seen["target"] = predicted, target
        return box_losses(predicted, target)

    monkeypatch.setattr(box, "box_losses", noting_targets)
    out = Task.for_model(model)({"region": move_batch(batch, torch.device("cpu"))})
    assert torch.isfinite(out["loss"])
    assert seen["target"].dtype == torch.float32 and torch.equal(seen["target"], batch["boxes"])
    assert seen["target"][0, 0] == UNREPRESENTABLE
