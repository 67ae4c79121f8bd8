"""Model configuration: YAML files under ``configs/model/``, validated on load.

Every error names the offending key by its dotted path (``text.fusion_start``), so a typo
in a config file is reported where the user made it.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

LOSS_KINDS = ("image", "region", "video")
LOSS_TERMS = {
    "image": ("itc", "itm", "mlm"),
    "region": ("itc", "itm", "mlm", "bbox", "giou"),
    "video": ("itc", "itm", "mlm"),
}


class ConfigError(ValueError):
    """A model config is malformed; the message names the key."""


@dataclasses.dataclass
class VisionConfig:
    # Any timm model name: BEiT-v2 (beitv2_*), plain ViT (vit_*), Swin (swin_*).
    name: str
    image_size: int = 224
    drop_path_rate: float = 0.0
    # Extra constructor arguments for timm (the tiny test model shrinks a BEiT this way).
    timm_kwargs: dict = dataclasses.field(default_factory=dict)
    # A local timm or BEiT checkpoint file (.pth/.pt/.bin/.safetensors); None starts random.
    pretrained: str | None = None
    # Frame position embeddings for video; videos may have fewer frames, never more.
    max_frames: int = 8


@dataclasses.dataclass
class TextConfig:
    kind: str = "bert"  # bert | roberta | xlm-roberta
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 18  # text layers plus fusion layers, as in one BERT stack
    fusion_start: int = 12  # layers from this index on add cross-attention to the vision tokens
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    pad_token_id: int = 0
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    # A local Hugging Face model directory (config.json + model.safetensors or pytorch_model.bin).
    pretrained: str | None = None


@dataclasses.dataclass
class LossConfig:
    itm_negatives: str = "global"  # global | local: where ITM hard negatives are drawn from
    # Which pairs count as positives (besides the pair itself) in ITC targets and are never
    # drawn as ITM negatives.
    same_image_positive: bool = True
    same_text_positive: bool = True
    weights: dict = dataclasses.field(
        default_factory=lambda: {kind: {term: 1.0 for term in LOSS_TERMS[kind]} for kind in LOSS_KINDS}
    )


@dataclasses.dataclass
class ModelConfig:
    vision: VisionConfig
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    embed_dim: int = 256
    temperature: float = 0.07
    temperature_min: float = 0.001
    temperature_max: float = 0.5
    activation_checkpointing: bool = False
    losses: LossConfig = dataclasses.field(default_factory=LossConfig)

    @property
    def num_fusion_layers(self) -> int:
        return self.text.num_layers - self.text.fusion_start


def _check_type(value: Any, annotation: Any, key: str) -> Any:
    hint = typing.get_origin(annotation)
    if hint in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        annotation = next(a for a in options if a is not type(None))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = typing.get_origin(annotation) or annotation
    if expected is dict and isinstance(value, dict):
        return value
    if isinstance(expected, type) and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
        raise ConfigError(f"{key}: expected {expected.__name__}, got {type(value).__name__} ({value!r})")
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (allowed: {', '.join(sorted(fields))})")
    values = {}
    for name, field in fields.items():
        key = f"{prefix}{name}"
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: missing required key")
            continue
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            values[name] = _build(annotation, data[name], f"{key}.")
        else:
            values[name] = _check_type(data[name], annotation, key)
    return cls(**values)


def _validate(config: ModelConfig) -> None:
    text, vision, losses = config.text, config.vision, config.losses
    rules = [
        ("text.kind", text.kind in ("bert", "roberta", "xlm-roberta"), "must be bert, roberta or xlm-roberta"),
        ("text.fusion_start", 0 < text.fusion_start < text.num_layers, "must lie between 1 and text.num_layers - 1"),
        ("text.hidden_size", text.hidden_size % text.num_heads == 0, "must be a multiple of text.num_heads"),
        ("vision.image_size", vision.image_size > 0, "must be positive"),
        ("vision.max_frames", vision.max_frames > 0, "must be positive"),
        ("embed_dim", config.embed_dim > 0, "must be positive"),
        ("temperature_min", 0 < config.temperature_min <= config.temperature <= config.temperature_max,
         "need 0 < temperature_min <= temperature <= temperature_max"),
        ("losses.itm_negatives", losses.itm_negatives in ("global", "local"), "must be global or local"),
    ]
    for key, ok, message in rules:
        if not ok:
            raise ConfigError(f"{key}: {message}")
    weights = {kind: {term: 1.0 for term in LOSS_TERMS[kind]} for kind in LOSS_KINDS}
    for kind, terms in losses.weights.items():
        if kind not in LOSS_TERMS:
            raise ConfigError(f"losses.weights.{kind}: unknown batch kind (allowed: {', '.join(LOSS_KINDS)})")
        if not isinstance(terms, dict):
            raise ConfigError(f"losses.weights.{kind}: expected a mapping of loss term to weight")
        for term, weight in terms.items():
            key = f"losses.weights.{kind}.{term}"
            if term not in LOSS_TERMS[kind]:
                raise ConfigError(f"{key}: unknown loss term (allowed: {', '.join(LOSS_TERMS[kind])})")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise ConfigError(f"{key}: expected a non-negative number, got {weight!r}")
            weights[kind][term] = float(weight)
    losses.weights = weights


def model_config_from_dict(data: dict) -> ModelConfig:
    config = _build(ModelConfig, data, "")
    _validate(config)
    return config


def load_model_config(path: str | Path) -> ModelConfig:
    """Reads and validates a model config YAML file."""
    with open(path) as f:
        data = yaml.safe_load(f)
    try:
        return model_config_from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
