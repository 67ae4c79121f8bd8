"""Checkpoints named as the official X²-VLM code names its parameters, written out
independently of the converter (training/model/convert.py), for the conversion and
init-from tests."""
from __future__ import annotations

import re
from pathlib import Path

import torch

FUSION_START = 2  # the tiny config's text.fusion_start


def official_name(name: str) -> str:
    """This model's name -> the official code's name."""
    layer = re.match(r"^(text\.encoder|fusion)\.layer\.(\d+)\.(.*)$", name)
    if layer:
        index = int(layer.group(2)) + (FUSION_START if layer.group(1) == "fusion" else 0)
        return f"text_encoder.bert.encoder.layer.{index}.{layer.group(3)}"
    fixed = {"temperature.temp": "temp", "video.frame_pos_embed": "absolute_frame_pos_embed"}
    if name in fixed:
        return fixed[name]
    for ours, theirs in (
        ("vision.trunk.", "vision_encoder."),
        ("text.embeddings.", "text_encoder.bert.embeddings."),
        ("mlm_head.", "text_encoder.cls.predictions."),
    ):
        if name.startswith(ours):
            return theirs + name[len(ours):]
    return name  # vision_proj, text_proj, itm_head, bbox_head


def official_state_dict(model: torch.nn.Module, drop: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    official = {official_name(k): v for k, v in model.state_dict().items() if not k.startswith(drop)}
    official["temp"] = official["temp"].reshape(())  # the official temperature is a 0-d tensor
    return official


def write_official_checkpoint(model: torch.nn.Module, path: Path, drop: tuple[str, ...] = ()) -> Path:
    torch.save({"model": official_state_dict(model, drop)}, path)
    return path
