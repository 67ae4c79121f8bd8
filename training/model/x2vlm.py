"""The X²-VLM model: vision tower, text tower, fusion layers and heads. It computes no loss:
the objectives (training/objectives) read its encoders and heads, and a task
(training/tasks) holds the model with the objectives of a run.

Inputs are uint8 pixels (B, 3, H, W) (normalised by the vision tower, see
``preprocessing.py``), frames (B, F, 3, H, W), token ids and masks (N, L). The encoders
return a ``VisionEncoding`` / ``TextEncoding``: tokens or hidden states, their attention mask
and the projected, normalised ``embed_dim`` features (the ITC embeddings):

- ``encode_image`` / ``encode_video`` / ``encode_regions`` (regions from the tokens of their
  images) / ``encode_text``; ``masked_image_encoding``: training's view of image batches with
  the ``mim`` section (masked patches, the MIM decoder's reconstruction);
- ``fuse`` (the fusion layers), ``decode`` (text and fusion layers in causal mode, for
  captioning), ``itm_logits`` / ``itm_score`` (the ITM head), ``predict_box`` (the box head),
  ``mlm_head`` (the MLM head, tied to the word embeddings).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from training.model.causal import causal_mask
from training.model.model_config import ModelConfig
from training.model.fusion import FusionEncoder
from training.model.heads import MaskedLanguageModelHead, Temperature, build_mlp
from training.model.masked_image import MaskedImageModelling, Reconstruction
from training.model.pretrained_text import load_pretrained_text
from training.model.regions import region_tokens
from training.model.text import build_text_encoder
from training.model.video import FrameTemporalPooling
from training.model.vision import VisionTower


@dataclasses.dataclass
class VisionEncoding:
    tokens: torch.Tensor  # (N, T, D)
    mask: torch.Tensor  # (N, T) bool: the tokens text may attend to
    features: torch.Tensor  # (N, embed_dim) normalised


@dataclasses.dataclass
class TextEncoding:
    hidden: torch.Tensor  # (N, L, H)
    mask: torch.Tensor  # (N, L)
    features: torch.Tensor  # (N, embed_dim) normalised


class X2VLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.vision = VisionTower(config.vision)
        self.video = FrameTemporalPooling(config.vision.max_frames, self.vision.width)
        self.text = build_text_encoder(config.text)
        hidden = config.text.hidden_size
        self.fusion = FusionEncoder(config.text, config.num_fusion_layers, self.vision.width)
        self.vision_proj = nn.Linear(self.vision.width, config.embed_dim)
        self.text_proj = nn.Linear(hidden, config.embed_dim)
        self.temperature = Temperature(config.temperature, config.temperature_min, config.temperature_max)
        self.itm_head = build_mlp(hidden, 2)
        self.bbox_head = build_mlp(hidden, 4)
        self.mlm_head = MaskedLanguageModelHead(self.text.config, self.text.embeddings.word_embeddings)
        # Patch masks of image-text batches, the MIM decoder (model config `mim`; off by default).
        self.mim = MaskedImageModelling(config.mim, self.vision, config.vision.name) if config.mim.masks else None
        self.set_activation_checkpointing(config.activation_checkpointing)

    def load_pretrained_towers(self) -> dict[str, list[str]]:
        """Loads the vision and text weights named in the config; returns what stayed random."""
        report = {}
        if self.config.vision.pretrained:
            missing, unexpected = self.vision.load_pretrained(self.config.vision.pretrained)
            report.update(vision_missing=missing, vision_unused=unexpected)
        if self.config.text.pretrained:
            text_report = load_pretrained_text(
                self.text, self.fusion, self.mlm_head, self.config.text.pretrained, self.config.text.fusion_start
            )
            text_report["mlm_head_missing"].remove("decoder.weight")  # tied to the word embeddings
            report.update(text_report)
        return report

    def pretrained_parameter_names(self, report: dict[str, list[str]]) -> set[str]:
        """Names of the parameters that ``load_pretrained_towers`` filled (its REPORT lists what
        stayed random per part); the optimizer gives the others a larger learning rate."""
        loaded = set()
        for part in ("vision", "text", "fusion", "mlm_head"):
            missing = report.get(f"{part}_missing")
            if missing is None:
                continue
            random_names = {f"{part}.{name}" for name in missing}
            loaded |= {name for name, _ in self.named_parameters() if name.startswith(f"{part}.")} - random_names
        return loaded

    def set_activation_checkpointing(self, enable: bool) -> None:
        self.vision.set_grad_checkpointing(enable)
        if enable:
            self.text.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.text.activation_checkpointing_disable()
        self.fusion.grad_checkpointing = enable

    # Encoders -----------------------------------------------------------------------------

    def _vision_encoding(self, tokens: torch.Tensor, mask: torch.Tensor) -> VisionEncoding:
        return VisionEncoding(tokens, mask, F.normalize(self.vision_proj(tokens[:, 0]), dim=-1))

    def encode_image(self, images: torch.Tensor) -> VisionEncoding:
        tokens = self.vision(images)
        return self._vision_encoding(tokens, tokens.new_ones(tokens.shape[:2], dtype=torch.bool))

    def masked_image_encoding(self, images: torch.Tensor) -> tuple[VisionEncoding, Reconstruction | None]:
        """Training's encoding of image batches: ``encode_image``, or with the `mim` section the
        view ITC / ITM / MLM read and the MIM decoder's reconstruction of the masked patches
        (see masked_image.py; None without the decoder)."""
        if self.mim is None:
            return self.encode_image(images), None
        tokens, reconstruction = self.mim(self.vision, images)
        return self._vision_encoding(tokens, tokens.new_ones(tokens.shape[:2], dtype=torch.bool)), reconstruction

    def encode_video(self, frames: torch.Tensor) -> VisionEncoding:
        batch, num_frames = frames.shape[:2]
        frame_tokens = self.vision(frames.flatten(0, 1))
        tokens = self.video(frame_tokens.unflatten(0, (batch, num_frames)))
        return self._vision_encoding(tokens, tokens.new_ones(tokens.shape[:2], dtype=torch.bool))

    def encode_regions(
        self, image_tokens: torch.Tensor, image_index: torch.Tensor, patch_mask: torch.Tensor
    ) -> VisionEncoding:
        """Regions from the tokens of their images (``encode_image(...).tokens``)."""
        return self._vision_encoding(region_tokens(image_tokens, image_index, patch_mask), patch_mask.bool())

    def text_hidden(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """(N, L, H): the text tower's output."""
        # A prepared (N, 1, 1, L) mask: from a 2D one transformers would first ask whether any
        # token is padding, a read of the mask that makes the host wait for the device.
        return self.text(input_ids=text_ids, attention_mask=text_mask.bool()[:, None, None, :]).last_hidden_state

    def encode_text(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> TextEncoding:
        hidden = self.text_hidden(text_ids, text_mask)
        return TextEncoding(hidden, text_mask, F.normalize(self.text_proj(hidden[:, 0]), dim=-1))

    def fuse(self, vision_tokens, vision_mask, text_hidden, text_mask) -> torch.Tensor:
        return self.fusion(text_hidden, text_mask, vision_tokens, vision_mask)

    def decode(self, vision_tokens, vision_mask, text_ids, text_mask) -> torch.Tensor:
        """(N, L, H): the text and fusion layers in causal mode (training/model/causal.py); the
        MLM head on position t gives the logits of token t + 1."""
        hidden = self.text(input_ids=text_ids, attention_mask=causal_mask(text_mask)).last_hidden_state
        return self.fusion(hidden, text_mask, vision_tokens, vision_mask, causal=True)

    def itm_logits(self, vision_tokens, vision_mask, text_hidden, text_mask) -> torch.Tensor:
        """(N, 2): the ITM head on the fusion of each (vision, text) pair; class 1 = match."""
        fused = self.fuse(vision_tokens, vision_mask, text_hidden, text_mask)
        return self.itm_head(fused[:, 0])

    def itm_score(self, vision: VisionEncoding, text: TextEncoding) -> torch.Tensor:
        """Probability that each (vision, text) pair matches: (N,)."""
        return self.itm_logits(vision.tokens, vision.mask, text.hidden, text.mask).float().softmax(dim=-1)[:, 1]

    def predict_box(self, image_tokens: torch.Tensor, text: TextEncoding) -> torch.Tensor:
        """(cx, cy, w, h) in [0, 1] of what each text describes; attends to the full image."""
        full = image_tokens.new_ones(image_tokens.shape[:2], dtype=torch.bool)
        fused = self.fuse(image_tokens, full, text.hidden, text.mask)
        return self.bbox_head(fused[:, 0]).float().sigmoid()
