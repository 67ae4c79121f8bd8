"""The X²-VLM model: vision tower, text tower, fusion layers, heads and pre-training losses.

Batches (one dict per kind; every kind is optional in ``forward``):

- ``image``: ``images`` uint8 (B, 3, H, W) pixels (normalised by the vision tower, see
  ``preprocessing.py``); ``text_ids``, ``text_mask`` (B, L) long;
  ``mlm_ids`` (B, L) masked input ids; ``mlm_labels`` (B, L), -100 where not masked;
  optionally ``image_index`` (B,) long when several texts share an image.
- ``region``: ``images`` (B_img, 3, H, W); per region text (R of them): ``image_index`` (R,)
  long, ``text_ids``, ``text_mask``, ``mlm_ids``, ``mlm_labels`` (R, L), ``boxes`` (R, 4) float32
  normalised (cx, cy, w, h), ``patch_mask`` (R, 1 + num_patches) bool (index 0 plus every
  patch the box overlaps). Texts of one image are positives of each other, never negatives.
- ``video``: ``frames`` (B, F, 3, H, W) uint8 plus the text fields of ``image``.

``forward`` returns ``{"loss": weighted total, "losses": {kind: {term: value}},
"features": {kind: {"vision": (N, E), "text": (N, E)}}}``. For evaluation use
``encode_image`` / ``encode_video`` / ``encode_regions`` / ``encode_text`` (their ``features``
are the projected, normalised ``embed_dim`` vectors), ``itm_score`` and ``predict_box``.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from training.losses import (
    PairKeys,
    box_losses,
    contrastive_loss,
    gather_padded,
    gather_with_grad,
    masked_language_model_loss,
    matching_loss,
    pair_positives,
    sample_hard_negatives,
)
from training.model.config import ModelConfig
from training.model.fusion import FusionEncoder
from training.model.heads import MaskedLanguageModelHead, Temperature, build_mlp
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


def _pad_length(x: torch.Tensor, length: int) -> torch.Tensor:
    """Pads dim 1 with zeros to ``length`` (ranks may use different sequence lengths)."""
    if x.shape[1] == length:
        return x
    padded = x.new_zeros((x.shape[0], length) + tuple(x.shape[2:]))
    padded[:, : x.shape[1]] = x
    return padded


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

    def _text_hidden(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return self.text(input_ids=text_ids, attention_mask=text_mask).last_hidden_state

    def encode_text(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> TextEncoding:
        hidden = self._text_hidden(text_ids, text_mask)
        return TextEncoding(hidden, text_mask, F.normalize(self.text_proj(hidden[:, 0]), dim=-1))

    def fuse(self, vision_tokens, vision_mask, text_hidden, text_mask) -> torch.Tensor:
        return self.fusion(text_hidden, text_mask, vision_tokens, vision_mask)

    def itm_score(self, vision: VisionEncoding, text: TextEncoding) -> torch.Tensor:
        """Probability that each (vision, text) pair matches: (N,)."""
        fused = self.fuse(vision.tokens, vision.mask, text.hidden, text.mask)
        return self.itm_head(fused[:, 0]).float().softmax(dim=-1)[:, 1]

    def predict_box(self, image_tokens: torch.Tensor, text: TextEncoding) -> torch.Tensor:
        """(cx, cy, w, h) in [0, 1] of what each text describes; attends to the full image."""
        full = image_tokens.new_ones(image_tokens.shape[:2], dtype=torch.bool)
        fused = self.fuse(image_tokens, full, text.hidden, text.mask)
        return self.bbox_head(fused[:, 0]).float().sigmoid()

    # Losses -------------------------------------------------------------------------------

    def forward(self, image: dict | None = None, region: dict | None = None, video: dict | None = None) -> dict:
        losses, features = {}, {}
        if image is not None:
            vision = self.encode_image(image["images"])
            losses["image"], features["image"], _ = self._alignment_losses(vision, image, image.get("image_index"))
        if region is not None:
            image_tokens = self.vision(region["images"])
            vision = self.encode_regions(image_tokens, region["image_index"], region["patch_mask"])
            losses["region"], features["region"], text = self._alignment_losses(vision, region, region["image_index"])
            box = self.predict_box(image_tokens[region["image_index"]], text)
            losses["region"]["bbox"], losses["region"]["giou"] = box_losses(box, region["boxes"])
        if video is not None:
            vision = self.encode_video(video["frames"])
            losses["video"], features["video"], _ = self._alignment_losses(vision, video, video.get("image_index"))
        weights = self.config.losses.weights
        total = sum(weights[kind][term] * value for kind, terms in losses.items() for term, value in terms.items())
        return {"loss": total, "losses": losses, "features": features}

    def _alignment_losses(self, vision: VisionEncoding, batch: dict, image_index) -> tuple[dict, dict, TextEncoding]:
        """ITC, ITM and MLM of one batch kind; also returns the text encoding for the box head."""
        settings = self.config.losses
        text = self.encode_text(batch["text_ids"], batch["text_mask"])
        keys = PairKeys.local(batch["text_ids"], batch["text_mask"], image_index)
        all_keys = keys.gathered()
        temperature = self.temperature()

        vision_all, text_all = gather_with_grad(vision.features), gather_with_grad(text.features)
        positives = pair_positives(all_keys, all_keys, settings.same_text_positive)
        itc = contrastive_loss(vision_all, text_all, temperature, positives)

        if settings.itm_negatives == "global":
            candidates = VisionEncoding(gather_with_grad(vision.tokens), gather_padded(vision.mask), vision_all)
            text_candidates = TextEncoding(gather_with_grad(text.hidden), gather_padded(text.mask), text_all)
            candidate_keys = all_keys
        else:
            candidates, text_candidates, candidate_keys = vision, text, keys
        itm = self._matching_loss(vision, text, keys, candidates, text_candidates, candidate_keys, temperature.detach())

        masked_hidden = self._text_hidden(batch["mlm_ids"], batch["text_mask"])
        fused = self.fuse(vision.tokens, vision.mask, masked_hidden, batch["text_mask"])
        mlm = masked_language_model_loss(self.mlm_head, fused, batch["mlm_labels"])
        return {"itc": itc, "itm": itm, "mlm": mlm}, {"vision": vision.features, "text": text.features}, text

    def _matching_loss(self, vision, text, keys, vision_candidates, text_candidates, candidate_keys, temperature):
        """Each local pair, its vision with a hard-negative text and its text with a hard-negative
        vision, through the fusion layers and the ITM head (labels 1, 0, 0).

        With global negatives the candidates are every rank's token sequences, gathered with
        gradient: the negative's own encoder learns from it too, at the price of an all-gather
        of the tokens forward and an all-reduce of their gradient backward.
        """
        settings = self.config.losses
        with torch.no_grad():
            positives = pair_positives(keys, candidate_keys, settings.same_text_positive)
            v2t = vision.features.float() @ text_candidates.features.float().t() / temperature
            t2v = text.features.float() @ vision_candidates.features.float().t() / temperature
            negative_text, text_valid = sample_hard_negatives(v2t, positives)
            negative_vision, vision_valid = sample_hard_negatives(t2v, positives)

        tokens_length = vision_candidates.tokens.shape[1]
        text_length = text_candidates.hidden.shape[1]
        own_tokens, own_vision_mask = _pad_length(vision.tokens, tokens_length), _pad_length(vision.mask, tokens_length)
        own_hidden, own_text_mask = _pad_length(text.hidden, text_length), _pad_length(text.mask, text_length)
        vision_tokens = torch.cat([own_tokens, vision_candidates.tokens[negative_vision], own_tokens])
        vision_mask = torch.cat([own_vision_mask, vision_candidates.mask[negative_vision], own_vision_mask])
        text_hidden = torch.cat([own_hidden, own_hidden, text_candidates.hidden[negative_text]])
        text_mask = torch.cat([own_text_mask, own_text_mask, text_candidates.mask[negative_text]])

        fused = self.fuse(vision_tokens, vision_mask, text_hidden, text_mask)
        logits = self.itm_head(fused[:, 0])
        count, device = vision.tokens.shape[0], logits.device
        labels = (torch.arange(3 * count, device=device) < count).long()
        weights = torch.cat([torch.ones(count, dtype=torch.bool, device=device), vision_valid, text_valid])
        return matching_loss(logits, labels, weights)
