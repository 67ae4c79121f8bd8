"""Model configuration: YAML files under ``configs/model/``, validated on load.

Every field declares its type, default and range here (data_pipeline/config.py builds and
checks them); every error names the offending key by its dotted path (``text.fusion_start``),
so a typo in a config file is reported where the user made it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from data_pipeline.config import ConfigError, build, read_yaml_file, setting, subkey

TEXT_KINDS = ("bert", "roberta", "xlm-roberta")
# Bounds far above any model of the field (the largest ViTs and BERTs have 48-96 blocks of width
# 1-8k): a model file that says more is a mistake or an attack, and building it first would
# take the machine's memory before any check ran.
MAX_DEPTH = 256
MAX_WIDTH = 16384
MAX_HEADS = 512
MAX_IMAGE_SIZE = 4096
# timm constructor arguments that size the tower, with their bounds; a Swin's `depths` is a list
# whose sum is bounded by MAX_DEPTH.
TIMM_SIZES = {"depth": MAX_DEPTH, "embed_dim": MAX_WIDTH, "num_heads": MAX_HEADS, "mlp_ratio": 64,
              "img_size": MAX_IMAGE_SIZE, "patch_size": MAX_IMAGE_SIZE, "window_size": MAX_IMAGE_SIZE,
              "num_classes": 1_000_000}
# timm constructor arguments that name files: weights come through vision.pretrained (read
# weights-only, inside the checks) or model.init_from, never through timm's own loader.
TIMM_FILE_ARGUMENTS = ("checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


@dataclasses.dataclass
class VisionConfig:
    # Any timm model name: BEiT-v2 (beitv2_*), plain ViT (vit_*), Swin (swin_*).
    name: str = setting(nonempty=True)
    image_size: int = setting(224, min=1, max=MAX_IMAGE_SIZE)
    drop_path_rate: float = setting(0.0, min=0, lt=1)
    # Extra constructor arguments for timm (the tiny test model shrinks a BEiT this way).
    timm_kwargs: dict = dataclasses.field(default_factory=dict)
    # A local timm or BEiT checkpoint file (.pth/.pt/.bin/.safetensors); None starts random.
    pretrained: str | None = setting(None, nonempty=True)
    # Frame position embeddings for video; videos may have fewer frames, never more.
    max_frames: int = setting(8, min=1, max=1024)

    def check(self, where: str) -> None:
        kwargs = subkey(where, "timm_kwargs")
        if not isinstance(self.timm_kwargs, dict):
            raise ConfigError(f"{kwargs}: expected a mapping of timm constructor arguments")
        for key, value in self.timm_kwargs.items():
            if key in TIMM_FILE_ARGUMENTS:
                raise ConfigError(f"{subkey(kwargs, key)}: timm may not read files named in the model config; "
                                  f"give weights as vision.pretrained or model.init_from")
            if key == "depths":
                if (not isinstance(value, (list, tuple)) or not value
                        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
                    raise ConfigError(f"{subkey(kwargs, key)}: expected a list of block counts >= 1, got {value!r}")
                if sum(value) > MAX_DEPTH:
                    raise ConfigError(f"{subkey(kwargs, key)}: {sum(value)} blocks in all; at most {MAX_DEPTH}")
            elif key in TIMM_SIZES:  # a number, or one per stage (Swin's num_heads)
                bound = TIMM_SIZES[key]
                values = value if isinstance(value, (list, tuple)) and value else [value]
                if not all(not isinstance(v, bool) and isinstance(v, (int, float)) and 0 < v <= bound for v in values):
                    raise ConfigError(f"{subkey(kwargs, key)}: must be a number (or a list of numbers) in "
                                      f"(0, {bound}], got {value!r}")


@dataclasses.dataclass
class TextConfig:
    kind: str = setting("bert", choices=TEXT_KINDS)
    vocab_size: int = setting(30522, min=1, max=2_000_000)
    hidden_size: int = setting(768, min=1, max=MAX_WIDTH)
    num_layers: int = setting(18, min=2, max=MAX_DEPTH)  # text layers plus fusion layers, as in one BERT stack
    fusion_start: int = setting(12, min=1)  # layers from this index on add cross-attention to the vision tokens
    num_heads: int = setting(12, min=1, max=MAX_HEADS)
    intermediate_size: int = setting(3072, min=1, max=4 * MAX_WIDTH)
    max_position_embeddings: int = setting(512, min=1, max=65536)
    type_vocab_size: int = setting(2, min=1, max=16)
    pad_token_id: int = setting(0, min=0)
    layer_norm_eps: float = setting(1e-12, gt=0, lt=1)
    dropout: float = setting(0.1, min=0, lt=1)
    # A local Hugging Face model directory (config.json + model.safetensors or pytorch_model.bin).
    pretrained: str | None = setting(None, nonempty=True)

    @property
    def position_offset(self) -> int:
        """The first position id: RoBERTa and XLM-R number positions from pad_token_id + 1 and give
        padding pad_token_id (transformers' create_position_ids_from_input_ids); BERT from 0."""
        return self.pad_token_id + 1 if self.kind in ("roberta", "xlm-roberta") else 0

    @property
    def token_positions(self) -> int:
        """The most tokens a text may have: the position embeddings less the position offset."""
        return self.max_position_embeddings - self.position_offset

    def check(self, where: str) -> None:
        if not 0 < self.fusion_start < self.num_layers:
            raise ConfigError(f"{subkey(where, 'fusion_start')}: must lie between 1 and text.num_layers - 1 "
                              f"({self.num_layers - 1}), got {self.fusion_start}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"{subkey(where, 'hidden_size')}: must be a multiple of text.num_heads "
                              f"({self.num_heads}), got {self.hidden_size}")
        if self.pad_token_id >= self.vocab_size:
            raise ConfigError(f"{subkey(where, 'pad_token_id')}: must be below text.vocab_size ({self.vocab_size}), "
                              f"got {self.pad_token_id}")


@dataclasses.dataclass
class MimConfig:
    """Masked image modelling and masked-patch dropping on image-text batches (see
    training/model/masked_image.py for which pass sees which patches). Off by default."""
    # The `image/mim` loss: reconstruct the masked patches' normalised pixels (MAE) with a light
    # decoder from the vision tower's output over the kept patches; weight losses.weights.image.mim.
    enabled: bool = False
    # FLIP: the image-text batch's one tower pass (ITC, ITM, MLM and MIM) sees the kept patches only.
    drop_masked: bool = False
    # Share of each image's patches masked, block-wise (BEiT); the count is exact per image.
    mask_ratio: float = setting(0.5, gt=0, lt=1)
    decoder_depth: int = setting(2, min=1, max=MAX_DEPTH)
    decoder_width: int = setting(256, min=1, max=MAX_WIDTH)
    decoder_heads: int = setting(8, min=1, max=MAX_HEADS)

    def check(self, where: str) -> None:
        if self.decoder_width % self.decoder_heads or self.decoder_width % 4:
            raise ConfigError(f"{subkey(where, 'decoder_width')}: must be a multiple of 4 (2D sine-cosine positions) "
                              f"and of mim.decoder_heads ({self.decoder_heads}), got {self.decoder_width}")

    @property
    def masks(self) -> bool:
        """Whether image-text batches draw patch masks at all."""
        return self.enabled or self.drop_masked


@dataclasses.dataclass
class ModelConfig:
    vision: VisionConfig = setting()
    text: TextConfig = setting(TextConfig)
    embed_dim: int = setting(256, min=1, max=MAX_WIDTH)
    # The contrastive temperature: learned, clamped to [temperature_min, temperature_max].
    temperature: float = setting(0.07, gt=0)
    temperature_min: float = setting(0.001, gt=0)
    temperature_max: float = setting(0.5, gt=0)
    activation_checkpointing: bool = False
    # The objectives' settings (which loss terms weigh what, and what they share): kept here so
    # that `model.losses.*` keys stay where runs and model folders have them, read and checked by
    # training/objectives/settings.py. The model itself reads none of them.
    losses: dict = dataclasses.field(default_factory=dict)
    mim: MimConfig = setting(MimConfig)
    # Weights to start from (the trainer and fine-tuning read it; see training/init_from.py): a
    # model folder, a weights file with this model's names (.safetensors / .pt), or an official
    # X²-VLM / X-VLM checkpoint (.th), converted on the fly. Applied after the pre-trained towers.
    init_from: str | None = setting(None, nonempty=True)

    def check(self, where: str) -> None:
        if not self.temperature_min <= self.temperature <= self.temperature_max:
            raise ConfigError(f"{subkey(where, 'temperature_min')}: need 0 < temperature_min <= temperature <= "
                              f"temperature_max, got {self.temperature_min}, {self.temperature}, {self.temperature_max}")

    @property
    def num_fusion_layers(self) -> int:
        return self.text.num_layers - self.text.fusion_start


def model_config_from_dict(data: dict, where: str = "") -> ModelConfig:
    """Validates a loaded mapping; WHERE prefixes the keys in messages (`model` in a run config)."""
    return build(ModelConfig, data, where)


def load_model_config(path: str | Path) -> ModelConfig:
    """Reads and validates a model config YAML file."""
    data = read_yaml_file(path, "model config")
    try:
        return model_config_from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
