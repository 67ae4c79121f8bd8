"""Reading state dicts from local checkpoint files (.safetensors or torch pickles)."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

# Wrappers under which training scripts commonly nest the weights.
_WRAPPER_KEYS = ("model", "module", "state_dict")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def find_hf_weights(directory: str | Path) -> Path:
    """The weights file of a local Hugging Face model directory."""
    directory = Path(directory)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin")
