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
- Optional in every kind: ``mlm_positions`` (N, K) long, each text's masked positions first
  (the loader's collate gives them; without them the MLM head runs on every position), and
  ``rows`` (int), the configured bound on texts per batch of the kind on any rank (the trainer
  gives it): the losses pad to it when they exchange rows between ranks. Without it every rank
  must hold the same number of texts per kind.
- With momentum distillation (``losses.momentum_distillation``, a momentum copy attached by
  training/momentum.py), every kind also needs ``sample_ids`` (B,) long: the identity of each
  image or video (a hash of its sample key), which the feature queues keep.

With ``losses.weights.image.lm`` > 0 the image batch also trains captioning (``image/lm``):
next-token prediction over ``text_ids`` in the causal mode (``decode``).

``forward`` returns ``{"loss": weighted total, "losses": {kind: {term: value}},
"stats": {kind: {"itm_dropped": hard-negative pairs left out for the exchange's capacity,
"itm_neg_sim", "itc_hardness": how hard the negatives are (losses/hardness.py), "temperature": the
contrastive temperature}},
"features": {kind: {"vision": (N, E), "text": (N, E)}}}``; nothing in it makes the host wait
for the device. For evaluation use
``encode_image`` / ``encode_video`` / ``encode_regions`` / ``encode_text`` (their ``features``
are the projected, normalised ``embed_dim`` vectors), ``itm_score`` and ``predict_box``.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from training.losses import (
    PairKeys,
    box_losses,
    consistency_loss,
    contrastive_loss,
    gather_with_grad,
    masked_language_model_loss,
    matching_loss,
    pair_positives,
    sample_hard_negatives,
)
from training.losses.captioning import captioning_loss
from training.losses.distillation import distilled_contrastive_loss, distilled_mlm_loss, queue_positives
from training.losses.gather import all_reduce_sum, gather_rows, pad_rows, world_size
from training.losses.hardness import drawn_similarity, itc_hardness, itm_negative_similarity
from training.losses.mlm import select_positions
from training.losses.exchange import CATEGORY, fetch_rows, send_rows, slot_capacity
from training.model.causal import causal_mask
from training.model.model_config import ModelConfig
from training.model.fusion import FusionEncoder
from training.model.heads import MaskedLanguageModelHead, Temperature, build_mlp
from training.model.masked_image import MaskedImageModelling
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
        # With losses.momentum_distillation, training/momentum.py's frozen moving-average copy.
        self.momentum = None
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

    def _masked_image_encoding(self, images: torch.Tensor) -> tuple[VisionEncoding, torch.Tensor | None]:
        """Training's image-text encoding: ``encode_image``, or with the `mim` section the view
        ITC / ITM / MLM read and the `image/mim` loss (see masked_image.py)."""
        if self.mim is None:
            return self.encode_image(images), None
        tokens, loss = self.mim(self.vision, images)
        return self._vision_encoding(tokens, tokens.new_ones(tokens.shape[:2], dtype=torch.bool)), loss

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
        # A prepared (N, 1, 1, L) mask: from a 2D one transformers would first ask whether any
        # token is padding, a read of the mask that makes the host wait for the device.
        return self.text(input_ids=text_ids, attention_mask=text_mask.bool()[:, None, None, :]).last_hidden_state

    def encode_text(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> TextEncoding:
        hidden = self._text_hidden(text_ids, text_mask)
        return TextEncoding(hidden, text_mask, F.normalize(self.text_proj(hidden[:, 0]), dim=-1))

    def fuse(self, vision_tokens, vision_mask, text_hidden, text_mask) -> torch.Tensor:
        return self.fusion(text_hidden, text_mask, vision_tokens, vision_mask)

    def decode(self, vision_tokens, vision_mask, text_ids, text_mask) -> torch.Tensor:
        """(N, L, H): the text and fusion layers in causal mode (training/model/causal.py); the
        MLM head on position t gives the logits of token t + 1."""
        hidden = self.text(input_ids=text_ids, attention_mask=causal_mask(text_mask)).last_hidden_state
        return self.fusion(hidden, text_mask, vision_tokens, vision_mask, causal=True)

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

    def forward(self, image: dict | None = None, region: dict | None = None, video: dict | None = None,
                distill_alpha: float | None = None, distill: bool = True) -> dict:
        """With a momentum copy attached and DISTILL, DISTILL_ALPHA (default: the configured
        alpha) weighs its predictions in the ITC and MLM targets; every batch then needs
        ``sample_ids``. Without DISTILL the copy is left out (before ``start_step``)."""
        losses, stats, features = {}, {}, {}
        alpha = self.config.losses.momentum_distillation.alpha if distill_alpha is None else distill_alpha
        alpha = alpha if distill else None
        if image is not None:
            vision, mim = self._masked_image_encoding(image["images"])
            losses["image"], stats["image"], features["image"], _ = self._alignment_losses(
                vision, image, image.get("image_index"), "image", self._teacher("image", image, alpha))
            if mim is not None:
                losses["image"]["mim"] = mim
            if self.config.losses.weights["image"]["lm"] > 0:
                losses["image"]["lm"] = captioning_loss(
                    self.mlm_head, self.decode(vision.tokens, vision.mask, image["text_ids"], image["text_mask"]),
                    image["text_ids"], image["text_mask"])
        if region is not None:
            image_tokens = self.vision(region["images"])
            if any(self.config.losses.weights["region"][term] for term in ("itc", "itm", "mlm")):
                vision = self.encode_regions(image_tokens, region["image_index"], region["patch_mask"])
                losses["region"], stats["region"], features["region"], text = self._alignment_losses(
                    vision, region, region["image_index"], "region", self._teacher("region", region, alpha))
            else:  # the box terms alone (grounding fine-tuning): no region features, ITC, ITM or MLM
                losses["region"], stats["region"] = {}, {}
                text = self.encode_text(region["text_ids"], region["text_mask"])
            box = self.predict_box(image_tokens[region["image_index"]], text)
            losses["region"]["bbox"], losses["region"]["giou"] = box_losses(box, region["boxes"])
        if video is not None:
            vision = self.encode_video(video["frames"])
            losses["video"], stats["video"], features["video"], _ = self._alignment_losses(
                vision, video, video.get("image_index"), "video", self._teacher("video", video, alpha))
        weights = self.config.losses.weights
        total = sum(weights[kind][term] * value for kind, terms in losses.items() for term, value in terms.items())
        return {"loss": total, "losses": losses, "stats": stats, "features": features}

    @torch.no_grad()
    def _teacher(self, kind: str, batch: dict, alpha: float) -> tuple[str, VisionEncoding, float] | None:
        """(KIND, the momentum copy's vision encoding of the batch, ALPHA); None without a
        momentum copy."""
        momentum = self.momentum
        if momentum is None or alpha is None:
            return None
        if kind == "image":
            return kind, momentum.encode_image(batch["images"]), alpha
        if kind == "region":
            tokens = momentum.vision(batch["images"])
            return kind, momentum.encode_regions(tokens, batch["image_index"], batch["patch_mask"]), alpha
        return kind, momentum.encode_video(batch["frames"]), alpha

    def _alignment_losses(self, vision: VisionEncoding, batch: dict, image_index, kind: str, teacher=None):
        """ITC, ITM and MLM (unless it weighs 0) of one batch kind; also returns its statistics,
        its features and the text encoding for the box head. TEACHER: (kind, the momentum copy's
        vision encoding, alpha) with momentum distillation, else None.

        Across ranks everything moves at fixed shapes: the batch kind's rows are padded to
        ``batch["rows"]`` (the configured bound on rows per batch of the kind; by default this
        rank's own count, which must then be the same on every rank) and padding is masked."""
        settings = self.config.losses
        text = self.encode_text(batch["text_ids"], batch["text_mask"])
        count = text.hidden.shape[0]
        rows = batch.get("rows") or count
        keys = PairKeys.local(batch["text_ids"], batch["text_mask"], image_index)
        all_keys = keys.gathered(rows)
        temperature = self.temperature()

        # ITC: this rank's rows against every rank's samples; the gradient of the gathered
        # features is reduce-scattered back to their owners. With momentum distillation the
        # candidates are the momentum copy's (no gradient) and the gathered features serve ITM only.
        if teacher is None:
            vision_all = gather_with_grad(pad_rows(vision.features, rows))
            text_all = gather_with_grad(pad_rows(text.features, rows))
        else:
            vision_all = gather_rows(pad_rows(vision.features.detach(), rows))
            text_all = gather_rows(pad_rows(text.features.detach(), rows))
        positives = pair_positives(keys, all_keys, settings.same_text_positive)
        share = all_keys.valid.sum() / world_size()  # each rank's share of the global mean
        if teacher is None:
            itc = contrastive_loss(vision.features, text.features, temperature, positives, vision_all, text_all,
                                   column_valid=all_keys.valid, normaliser=share)
        else:
            itc = self._distilled_contrastive(teacher, vision, text, batch, image_index, keys, all_keys, positives,
                                              rows, temperature, share)

        losses = {"itc": itc}
        if settings.weights[kind]["itc_cons"]:  # GRIT-VLP's consistency term (optional, weight 0: not computed)
            losses["itc_cons"] = consistency_loss(vision.features, text.features, temperature, vision_all, text_all,
                                                  column_valid=all_keys.valid, normaliser=share)

        excluded = positives | ~all_keys.valid[None, :]
        hardness = itc_hardness(vision.features, text.features, vision_all.detach(), text_all.detach(), excluded)
        if settings.itm_negatives == "global" and world_size() > 1:
            itm, dropped, negative_sim = self._matching_loss_global(vision, text, batch["text_ids"], vision_all,
                                                                    text_all, excluded, rows, temperature.detach())
        else:
            itm, negative_sim = self._matching_loss_local(vision, text, keys, temperature.detach())
            dropped = text.hidden.new_zeros(())

        losses["itm"] = itm
        if settings.weights[kind]["mlm"]:  # weight 0 (retrieval fine-tuning): not computed
            masked_hidden = self._text_hidden(batch["mlm_ids"], batch["text_mask"])
            fused = self.fuse(vision.tokens, vision.mask, masked_hidden, batch["text_mask"])
            if teacher is not None and settings.momentum_distillation.mlm:
                losses["mlm"] = self._distilled_mlm(teacher, fused, batch)
            else:
                losses["mlm"] = masked_language_model_loss(self.mlm_head, fused, batch["mlm_labels"],
                                                           batch.get("mlm_positions"))
        stats = {"itm_dropped": dropped.float(), "itm_neg_sim": negative_sim, "itc_hardness": hardness,
                 "temperature": temperature.detach().float()}
        return (losses, stats,
                {"vision": vision.features, "text": text.features}, text)

    def _distilled_contrastive(self, teacher, vision, text, batch, image_index, keys, all_keys, positives, rows,
                               temperature, share):
        """ALBEF's ITC: this rank's rows against the momentum copy's features of every rank's
        batch and of the kind's queue, targets mixed with the momentum copy's similarities; then
        every rank's momentum features go into the queue (the same on every rank)."""
        kind, teacher_vision, alpha = teacher
        queue = self.momentum.queues[kind]
        with torch.no_grad():
            teacher_text = self.momentum.encode_text(batch["text_ids"], batch["text_mask"])
            image_id = batch["sample_ids"] if image_index is None else batch["sample_ids"][image_index]
            width = teacher_vision.features.shape[1]
            gathered = gather_rows(pad_rows(torch.cat([teacher_vision.features, teacher_text.features], 1), rows))
            identity = gather_rows(pad_rows(torch.stack([image_id, keys.text], 1), rows))
            # New tensors: the loss keeps them for backward while the queue changes in place.
            vision_columns = torch.cat([gathered[:, :width].to(queue.vision.dtype), queue.vision])
            text_columns = torch.cat([gathered[:, width:].to(queue.text.dtype), queue.text])
            in_queue = queue_positives(image_id, keys.text, queue, self.config.losses.same_text_positive)
            column_valid = torch.cat([all_keys.valid, queue.valid])
        itc = distilled_contrastive_loss(vision.features, text.features, teacher_vision.features,
                                         teacher_text.features, vision_columns, text_columns, temperature,
                                         torch.cat([positives, in_queue], 1), column_valid, alpha, share)
        queue.push(gathered[:, :width], gathered[:, width:], identity[:, 0], identity[:, 1], all_keys.valid)
        return itc

    def _distilled_mlm(self, teacher, fused, batch):
        """ALBEF's MLM: the masked tokens' targets mixed with the momentum copy's predictions,
        fused with its own vision tokens."""
        (_, teacher_vision, alpha), momentum, positions = teacher, self.momentum, batch.get("mlm_positions")
        with torch.no_grad():
            teacher_hidden = momentum._text_hidden(batch["mlm_ids"], batch["text_mask"])
            teacher_fused = momentum.fuse(teacher_vision.tokens, teacher_vision.mask, teacher_hidden,
                                          batch["text_mask"])
            teacher_fused, _ = select_positions(teacher_fused, batch["mlm_labels"], positions)
            teacher_logits = momentum.mlm_head(teacher_fused)
        hidden, labels = select_positions(fused, batch["mlm_labels"], positions)
        return distilled_mlm_loss(self.mlm_head(hidden), teacher_logits, labels, alpha)

    def _itm_logits(self, vision_tokens, vision_mask, text_hidden, text_mask) -> torch.Tensor:
        fused = self.fuse(vision_tokens, vision_mask, text_hidden, text_mask)
        return self.itm_head(fused[:, 0])

    def _matching_loss_local(self, vision, text, keys, temperature):
        """Each pair, its vision with a hard-negative text and its text with a hard-negative
        vision of this rank's batch, through the fusion layers and the ITM head (labels 1, 0, 0)."""
        settings = self.config.losses
        with torch.no_grad():
            positives = pair_positives(keys, keys, settings.same_text_positive)
            v2t = vision.features.float() @ text.features.float().t() / temperature
            t2v = text.features.float() @ vision.features.float().t() / temperature
            negative_text, text_valid = sample_hard_negatives(v2t, positives)
            negative_vision, vision_valid = sample_hard_negatives(t2v, positives)
            negative_sim = itm_negative_similarity(drawn_similarity(v2t, negative_text, text_valid, temperature),
                                                   drawn_similarity(t2v, negative_vision, vision_valid, temperature))
        vision_tokens = torch.cat([vision.tokens, vision.tokens[negative_vision], vision.tokens])
        vision_mask = torch.cat([vision.mask, vision.mask[negative_vision], vision.mask])
        text_hidden = torch.cat([text.hidden, text.hidden, text.hidden[negative_text]])
        text_mask = torch.cat([text.mask, text.mask, text.mask[negative_text]])
        logits = self._itm_logits(vision_tokens, vision_mask, text_hidden, text_mask)
        count, device = vision.tokens.shape[0], logits.device
        labels = (torch.arange(3 * count, device=device) < count).long()
        weights = torch.cat([torch.ones(count, dtype=torch.bool, device=device), vision_valid, text_valid])
        return matching_loss(logits, labels, weights), negative_sim

    def _matching_loss_global(self, vision, text, text_ids, vision_all, text_all, excluded, rows, temperature):
        """ITM with hard negatives drawn from every rank's batch (``excluded``: the positives and
        the padding among the gathered columns). Each pair is computed once, where its vision
        lives: this rank's pairs; its visions with their hard-negative texts, whose text rows
        are fetched from their owners; and the texts other ranks sent here with a hard-negative
        vision of this rank. Only text rows move (a fifth of a vision row): hidden states whose
        gradient goes back to their owners through the same exchange, or (``itm_exchange:
        token_ids``) token ids that the text tower encodes again here. The loss is divided by the
        global number of pairs / world size: the ranks' mean is the mean over every pair.

        Returns (loss, pairs left out for the exchange's capacity, mean similarity of the drawn
        negatives)."""
        settings = self.config.losses
        with torch.no_grad():
            v2t = vision.features.float() @ text_all.detach().float().t() / temperature
            t2v = text.features.float() @ vision_all.detach().float().t() / temperature
            negative_text, text_valid = sample_hard_negatives(v2t, excluded)
            negative_vision, vision_valid = sample_hard_negatives(t2v, excluded)
            negative_sim = itm_negative_similarity(drawn_similarity(v2t, negative_text, text_valid, temperature),
                                                   drawn_similarity(t2v, negative_vision, vision_valid, temperature))

        world = world_size()
        capacity = slot_capacity(rows, world, settings.itm_exchange_capacity)
        by_ids = settings.itm_exchange == "token_ids"
        if by_ids:
            payload = torch.cat([text_ids, text.mask.to(text_ids.dtype)], dim=-1).to(torch.int32)
        else:
            payload = torch.cat([text.hidden, text.mask[..., None].to(text.hidden.dtype)], dim=-1)
        fetched, fetched_placed = fetch_rows(payload, negative_text, text_valid, rows, capacity)
        keep = min(world * capacity, rows + math.ceil(settings.itm_receive_margin * math.sqrt(rows)))
        received = send_rows(payload, negative_vision, vision_valid, rows, capacity, keep)

        if by_ids:
            moved, length = torch.cat([fetched, received.rows]), text_ids.shape[1]
            moved_mask = moved[:, length:].long()
            text_hidden = torch.cat([text.hidden, self._text_hidden(moved[:, :length].long(), moved_mask)])
            text_mask = torch.cat([text.mask.bool(), moved_mask.bool()])
        else:  # one concatenation of the three, as before token ids: the gradients sum in the same order
            width = text.hidden.shape[-1]
            text_rows = torch.cat([payload, fetched, received.rows])
            text_hidden, text_mask = text_rows[..., :width], text_rows[..., width] > 0.5
        own = torch.arange(vision.tokens.shape[0], device=payload.device)
        partner = torch.cat([own, own, received.target])
        logits = self._itm_logits(vision.tokens.index_select(0, partner), vision.mask.index_select(0, partner),
                                  text_hidden, text_mask)
        count = own.shape[0]
        labels = (torch.arange(logits.shape[0], device=logits.device) < count).long()
        weights = torch.cat([torch.ones_like(text_valid), text_valid & fetched_placed, received.valid])
        total = all_reduce_sum(weights.sum(), CATEGORY)
        dropped = (text_valid & ~fetched_placed).sum() + received.dropped_sending + received.dropped_receiving
        return matching_loss(logits, labels, weights, normaliser=total / world), dropped, negative_sim
