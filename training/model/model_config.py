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
LOSS_KINDS = ("image", "region", "video")
LOSS_TERMS = {
    "image": ("itc", "itm", "mlm", "mim", "lm", "itc_cons"),
    "region": ("itc", "itm", "mlm", "bbox", "giou", "itc_cons"),
    "video": ("itc", "itm", "mlm", "itc_cons"),
}
# Optional objectives: weight 0 unless the config gives one; a term of weight 0 is not computed.
# image/lm: captioning, next-token prediction in the causal mode (training/model/causal.py).
# <kind>/itc_cons: GRIT-VLP's ITC consistency loss (losses/contrastive.py; 0.2 in its code).
OPTIONAL_TERMS = {"image": ("lm", "itc_cons"), "region": ("itc_cons",), "video": ("itc_cons",)}


def default_loss_weights() -> dict[str, dict[str, float]]:
    return {kind: {term: 0.0 if term in OPTIONAL_TERMS.get(kind, ()) else 1.0 for term in LOSS_TERMS[kind]}
            for kind in LOSS_KINDS}


@dataclasses.dataclass
class VisionConfig:
    # Any timm model name: BEiT-v2 (beitv2_*), plain ViT (vit_*), Swin (swin_*).
    name: str = setting(nonempty=True)
    image_size: int = setting(224, min=1)
    drop_path_rate: float = setting(0.0, min=0, lt=1)
    # Extra constructor arguments for timm (the tiny test model shrinks a BEiT this way).
    timm_kwargs: dict = dataclasses.field(default_factory=dict)
    # A local timm or BEiT checkpoint file (.pth/.pt/.bin/.safetensors); None starts random.
    pretrained: str | None = setting(None, nonempty=True)
    # Frame position embeddings for video; videos may have fewer frames, never more.
    max_frames: int = setting(8, min=1)


@dataclasses.dataclass
class TextConfig:
    kind: str = setting("bert", choices=TEXT_KINDS)
    vocab_size: int = setting(30522, min=1)
    hidden_size: int = setting(768, min=1)
    num_layers: int = setting(18, min=2)  # text layers plus fusion layers, as in one BERT stack
    fusion_start: int = setting(12, min=1)  # layers from this index on add cross-attention to the vision tokens
    num_heads: int = setting(12, min=1)
    intermediate_size: int = setting(3072, min=1)
    max_position_embeddings: int = setting(512, min=1)
    type_vocab_size: int = setting(2, min=1)
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
class MomentumDistillationConfig:
    """ALBEF's momentum distillation (training/momentum.py, training/losses/distillation.py): an
    exponential moving average of the towers, projections, fusion layers and MLM head; queues of
    its features as extra contrastive candidates per batch kind; ITC and MLM targets mixed with
    the momentum model's predictions."""
    enabled: bool = False
    # momentum weights <- momentum x momentum weights + (1 - momentum) x weights, once per
    # optimizer step (ALBEF / LAVIS: 0.995).
    momentum: float = setting(0.995, gt=0, lt=1)
    # Entries per queue (one queue per batch kind, each entry a vision and a text feature with
    # their identity). Each step adds world size x rows of the kind (padding rows included,
    # marked invalid), which must fit: the trainer checks. ALBEF: 65536.
    queue_size: int = setting(65536, min=1)
    # The weight of the momentum model's distribution in the ITC and MLM targets.
    alpha: float = setting(0.4, min=0, max=1)
    # alpha grows linearly from 0 over the first alpha_ramp_steps optimizer steps (ALBEF: the
    # first epoch; set it to the run's steps per epoch); 0: the full alpha from step 1.
    alpha_ramp_steps: int = setting(1000, min=0)
    # Mix the MLM targets with the momentum model's fused predictions too (ALBEF does).
    mlm: bool = True
    # The optimizer step from which the momentum copy takes part; before it, the plain losses
    # and no momentum copy to run or update. At that step the copy restarts as the trained
    # weights, and alpha ramps from there. ALBEF starts at 0 from pre-trained towers. From random
    # weights the copy's features are all alike (the demo, from scratch: mean cosine 0.997
    # between its images' features after 400 steps), the ITC targets then say nothing and ITC
    # does not learn: start once the towers tell samples apart.
    start_step: int = setting(0, min=0)


@dataclasses.dataclass
class LossConfig:
    itm_negatives: str = setting("global", choices=("global", "local"))  # where ITM hard negatives are drawn from
    # Global negatives move only the drawn text rows between ranks, in an all-to-all of fixed
    # size: each pair of ranks has ceil(itm_exchange_capacity x rows / world size) slots per
    # step (rows: the kind's texts per rank), so each rank hands about capacity x rows text rows
    # whatever the world size; a draw beyond its pair's slots is left out of the ITM loss and
    # counted (`<kind>/itm_dropped`). With world size <= capacity nothing is ever left out.
    itm_exchange_capacity: float = setting(2.0, min=1)
    # What a moved text row is. `hidden_states`: the owner's text-tower output (bf16, length x
    # hidden: 61 KB at base shapes), with its gradient sent back. `token_ids`: its token ids and
    # mask (int32, 320 B at length 40), encoded again by the text tower where it is paired, so
    # nothing goes back; about 1/200 of the bytes for about 2 x rows more text-tower passes a
    # step (+18 % of an image-text step's FLOPs at base shapes). docs/PERFORMANCE.md gives the
    # interconnect speed below which token_ids is the faster choice. The re-encoded rows see their
    # own dropout draw; with dropout 0 both give the same losses and summed gradients.
    itm_exchange: str = setting("hidden_states", choices=("hidden_states", "token_ids"))
    # The texts other ranks send a rank, to pair with a hard-negative vision of its own, number
    # about `rows` on average; it computes at most rows + itm_receive_margin x sqrt(rows) of
    # them (a margin in standard deviations of that count); beyond, left out and counted.
    itm_receive_margin: float = setting(4.0, min=0)
    # Which pairs count as positives (besides the pair itself) in ITC targets and are never
    # drawn as ITM negatives.
    same_text_positive: bool = True
    # losses.weights.<kind>.<term>; a term not given weighs 1.0, an optional one 0 (OPTIONAL_TERMS).
    weights: dict[str, dict[str, float]] = setting(default_loss_weights(), keys=LOSS_KINDS)
    momentum_distillation: MomentumDistillationConfig = setting(MomentumDistillationConfig)

    def check(self, where: str) -> None:
        weights = default_loss_weights()
        for kind, terms in self.weights.items():
            for term, weight in terms.items():
                key = subkey(where, f"weights.{kind}.{term}")
                if term not in LOSS_TERMS[kind]:
                    raise ConfigError(f"{key}: unknown loss term (allowed: {', '.join(LOSS_TERMS[kind])})")
                if weight < 0:
                    raise ConfigError(f"{key}: must be >= 0, got {weight!r}")
                weights[kind][term] = weight
        self.weights = weights


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
    decoder_depth: int = setting(2, min=1)
    decoder_width: int = setting(256, min=1)
    decoder_heads: int = setting(8, min=1)

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
    embed_dim: int = setting(256, min=1)
    # The contrastive temperature: learned, clamped to [temperature_min, temperature_max].
    temperature: float = setting(0.07, gt=0)
    temperature_min: float = setting(0.001, gt=0)
    temperature_max: float = setting(0.5, gt=0)
    activation_checkpointing: bool = False
    losses: LossConfig = setting(LossConfig)
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
