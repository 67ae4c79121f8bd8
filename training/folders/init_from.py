"""Starting a model from weights (`model.init_from`, `x2vlm-pretrain --init-from PATH`).

PATH is one of
- a model folder (training/model_folder.py; also one written before it had tokenizer/ and
  card.json): its model.safetensors;
- a weights file named as this model names its parameters: `.safetensors`, or a torch file
  (`.pt`, `.pth`, `.bin`; a state dict, also nested under `model` / `module` / `state_dict`);
- an official X²-VLM / X-VLM checkpoint (`.th`, named `vision_encoder.*`, `text_encoder.*`),
  renamed on the fly by x2vlm-convert's mapping (training/model/convert.py).

Torch files are read weights-only. Parameters the file provides are copied into the model;
the others keep their initial values and are reported, as are the file's keys that have no
place in the model. A key whose shape differs from the model's is an error naming it. The
weights are copied into the model before DeepSpeed partitions it, so every ZeRO stage starts
from them; they count as pre-trained for `optim.new_param_lr_scale`, as the towers do.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from training.runtime.safe_load import short_error
from training.model.checkpoint_files import read_state_dict
from training.folders.official_weights import convert_state_dict, is_official_state_dict
from training.folders.model_folder import TIED_PARAMETERS, TOKENIZER_DIR, ModelFolderError, read_folder_weights

REPORT_FILE = "init_from.json"
_SHOWN = 8  # keys named in a summary line; the report file lists all


class InitFromError(ValueError):
    """Weights that cannot start this model; the message names the file and, where it is one
    key, the key."""


@dataclasses.dataclass
class InitReport:
    source: str
    kind: str  # "model folder", "weights file" or "official checkpoint"
    loaded: list[str]  # the model's parameters the file provided
    random: list[str]  # the model's parameters it did not: they keep their initial values
    unused: list[str]  # the file's keys with no place in the model
    # of `random`: parameters the source architecture never had (video, for an image-only
    # official checkpoint)
    not_in_source: list[str] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        """One line for what was loaded, one for what stayed random, one for what was unused."""
        total = len(self.loaded) + len(self.random)

        def named(keys: list[str]) -> str:
            return ", ".join(keys[:_SHOWN]) + (f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")

        out = [f"model.init_from {self.source} ({self.kind}): {len(self.loaded)} of {total} parameters loaded"]
        random = f"{len(self.random)} parameters keep their initial values"
        if self.random:
            random += f": {named(self.random)}"
        if self.not_in_source:
            random += f" ({len(self.not_in_source)} of them not in the source architecture: {named(self.not_in_source)})"
        out.append(random)
        out.append(f"{len(self.unused)} keys of the file unused" + (f": {named(self.unused)}" if self.unused else ""))
        return out

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1) + "\n", encoding="utf-8")
        return path


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return read_state_dict(path)  # torch.load(..., weights_only=True)
    except pickle.UnpicklingError as error:
        raise InitFromError(f"{path}: refused to load weights-only: {short_error(error)}") from None
    except (SafetensorError, RuntimeError, OSError) as error:
        raise InitFromError(f"{path}: not a readable weights file ({str(error).splitlines()[0]})") from None


def read_init_weights(path: str | Path, model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], InitReport]:
    """The weights at PATH under this model's names, and what they cover of MODEL."""
    path = Path(path)
    if not path.exists():
        raise InitFromError(f"{path}: does not exist")
    unused, not_in_source = [], []
    if path.is_dir():
        if (path / "COMPLETE").exists():
            raise InitFromError(f"{path}: a training checkpoint; continue it with --resume {path}, or start from its "
                                f"weights through a model folder: x2vlm-export {path} --out FOLDER")
        try:
            state, kind = read_folder_weights(path), "model folder"
        except ModelFolderError as error:
            raise InitFromError(str(error)) from None
    else:
        state = _read_file(path)
        if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
            raise InitFromError(f"{path}: holds no state dict of tensors")
        unused = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))  # epoch, config, ...
        state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        kind = "weights file"
        if is_official_state_dict(state):
            kind = "official checkpoint"
            state, conversion = convert_state_dict(state, model)
            if conversion.shape_mismatches:
                raise InitFromError(f"{path}: shapes do not fit the model: {'; '.join(conversion.shape_mismatches[:5])}")
            unused += conversion.unmatched_official
            not_in_source = list(conversion.not_in_source)
    targets = model.state_dict()
    for name, value in state.items():
        if name in targets and value.shape != targets[name].shape:
            raise InitFromError(f"{path}: {name}: shape {tuple(value.shape)} in the file, {tuple(targets[name].shape)} "
                                f"in the model")
    unused += sorted(name for name in state if name not in targets)
    parameters = [name for name, _ in model.named_parameters()]
    loaded = [name for name in parameters if name in state]
    random = [name for name in parameters if name not in state]
    state = {name: value for name, value in state.items() if name in targets and name not in TIED_PARAMETERS}
    return state, InitReport(str(path), kind, loaded, random, unused, not_in_source)


@torch.no_grad()
def init_from(model: torch.nn.Module, path: str | Path) -> InitReport:
    """Copies the weights at PATH into MODEL (in place); returns what they covered."""
    state, report = read_init_weights(path, model)
    model.load_state_dict(state, strict=False)
    return report


def tokenizer_differs(path: str | Path, tokenizer: str | Path) -> bool:
    """Whether a model folder at PATH carries a tokenizer whose vocabulary is not TOKENIZER's
    (token ids would then not mean what the weights learned). False when PATH has none."""
    folder_tokenizer = Path(path) / TOKENIZER_DIR
    if not folder_tokenizer.is_dir():
        return False
    from data_pipeline.text.encoder import load_tokenizer

    return load_tokenizer(str(folder_tokenizer)).get_vocab() != load_tokenizer(str(tokenizer)).get_vocab()
