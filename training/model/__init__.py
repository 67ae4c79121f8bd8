"""The X²-VLM model. ``create_model`` is the one way to build it."""
from __future__ import annotations

import sysconfig
from pathlib import Path

from training.model.timm_import import import_timm_without_wandb

import_timm_without_wandb()  # before any module of this package imports timm

from training.model.model_config import ModelConfig, load_model_config, model_config_from_dict  # noqa: E402
from training.model.x2vlm import TextEncoding, VisionEncoding, X2VLM  # noqa: E402


def model_config_dir() -> Path:
    """configs/model of the checkout this package runs from; else the copy an installed
    package keeps under its prefix (setup.py's data_files)."""
    checkout = Path(__file__).resolve().parents[2] / "configs" / "model"
    if checkout.is_dir():
        return checkout
    return Path(sysconfig.get_path("data")) / "share" / "x2vlm-pretrain" / "configs" / "model"


CONFIG_DIR = model_config_dir()


def create_model(config: ModelConfig | dict | str | Path, load_pretrained: bool = True) -> X2VLM:
    """Builds X²-VLM from a config object, a dict, a YAML path or a name in configs/model/.

    ``load_pretrained`` loads the local vision / text weights the config names.
    """
    if isinstance(config, dict):
        config = model_config_from_dict(config)
    elif not isinstance(config, ModelConfig):
        path = Path(config)
        if not path.suffix and not path.exists():
            path = CONFIG_DIR / f"{path}.yaml"
        config = load_model_config(path)
    model = X2VLM(config)
    if load_pretrained:
        model.load_pretrained_towers()
    return model


__all__ = ["CONFIG_DIR", "ModelConfig", "TextEncoding", "VisionEncoding", "X2VLM", "create_model", "load_model_config"]
