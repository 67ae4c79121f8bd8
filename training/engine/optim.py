"""AdamW parameter groups and the learning-rate schedule, as X2-VLM trains.

Groups: weight decay on weights only (not on biases and norms), and a larger learning rate
for parameters the pre-trained towers did not provide (cross-attention, heads)."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch


def is_no_decay(name: str, param: torch.nn.Parameter) -> bool:
    return param.ndim <= 1 or name.endswith(".bias") or "norm" in name.lower()


def parameter_groups(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float,
                     is_new: Callable[[str], bool], new_lr_scale: float) -> list[dict]:
    groups: dict[tuple[bool, bool], dict] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        no_decay, new = is_no_decay(name, param), is_new(name)
        group = groups.setdefault((no_decay, new), {
            "params": [], "names": [],
            "weight_decay": 0.0 if no_decay else weight_decay,
            "lr": lr * (new_lr_scale if new else 1.0),
        })
        group["params"].append(param)
        group["names"].append(name)
    # A fixed order keeps optimizer state indices stable across runs and resumes.
    ordered = [groups[k] for k in sorted(groups)]
    for group in ordered:
        del group["names"]
    return ordered


def schedule_factor(step: int, warmup_steps: int, total_steps: int, kind: str = "linear", min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate after STEP optimizer steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if kind == "linear":
        decay = 1.0 - progress
    elif kind == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"optim.schedule must be 'linear' or 'cosine', got {kind!r}")
    return min_ratio + (1.0 - min_ratio) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, kind: str,
                    min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule_factor(step, warmup_steps, total_steps, kind, min_ratio))
