"""Initialising the text tower, fusion layers and MLM head from a local Hugging Face checkpoint.

As X²-VLM does with BERT-base: the text tower takes layers 0 .. fusion_start-1, the fusion
layers start from the last ``num_fusion`` of those (6 .. 11 for base), and cross-attention
starts random.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from training.model.checkpoint_files import find_hf_weights, read_state_dict
from training.model.text import HF_ENCODER_PREFIXES, HF_MLM_HEAD_NAMES

_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.*)$")


def _strip_encoder_prefix(key: str) -> str:
    for prefix in HF_ENCODER_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def split_hf_state_dict(
    state: dict[str, torch.Tensor], fusion_start: int, num_fusion: int
) -> tuple[dict, dict, dict, list[str]]:
    """(text tower, fusion layers, MLM head, unused keys) state dicts."""
    first_fusion_source = fusion_start - num_fusion
    if first_fusion_source < 0:
        raise ValueError(
            f"the text checkpoint must have at least {num_fusion} layers below fusion_start={fusion_start} "
            "to initialise the fusion layers from"
        )
    text, fusion, head, unused = {}, {}, {}, []
    for key, value in state.items():
        if key in HF_MLM_HEAD_NAMES:
            head[HF_MLM_HEAD_NAMES[key]] = value
            continue
        name = _strip_encoder_prefix(key).replace("LayerNorm.gamma", "LayerNorm.weight")
        name = name.replace("LayerNorm.beta", "LayerNorm.bias")
        layer = _LAYER.match(name)
        if name.startswith("embeddings."):
            text[name] = value
        elif layer is None:
            unused.append(key)
        else:
            index, rest = int(layer.group(1)), layer.group(2)
            if index < fusion_start:
                text[name] = value
            if first_fusion_source <= index < fusion_start:
                fusion[f"layer.{index - first_fusion_source}.{rest}"] = value
            if index >= fusion_start:
                unused.append(key)
    return text, fusion, head, unused


def load_pretrained_text(
    text_encoder: nn.Module, fusion: nn.Module, mlm_head: nn.Module, directory: str | Path, fusion_start: int
) -> dict[str, list[str]]:
    """Loads the weights; returns the keys left random per part and the checkpoint keys unused."""
    state = read_state_dict(find_hf_weights(directory))
    text, fusion_state, head, unused = split_hf_state_dict(state, fusion_start, len(fusion.layer))
    report = {"unused": unused}
    for name, module, part in (("text", text_encoder, text), ("fusion", fusion, fusion_state), ("mlm_head", mlm_head, head)):
        result = module.load_state_dict(part, strict=False)
        report[f"{name}_missing"] = list(result.missing_keys)
        report["unused"] += [f"{name}:{k}" for k in result.unexpected_keys]
    return report
