"""ITM: image (region, video) - text matching with hard negatives, the `itm` term of image,
region and video batches. Its figures: `itm_neg_sim`, how similar the drawn negatives are
(hardness.py), and `itm_dropped`, the pairs the exchange between ranks had no room for.

Negatives are drawn in proportion to softmax(similarity / temperature) over the candidates
that are not positives, for every sample at once with ``torch.multinomial`` on the device:
no per-sample loop and no host synchronisation. Sampling weights and the loss are fp32
(X²-VLM's fp16 weights produced NaNs).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.objectives import Objective, register_objective
from training.objectives.gather import all_reduce_sum, world_size
from training.objectives.hardness import drawn_similarity, itm_negative_similarity
from training.objectives.itm_exchange import CATEGORY, fetch_rows, send_rows, slot_capacity
from training.objectives.positives import pair_positives


def sample_hard_negatives(
    logits: torch.Tensor, positives: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One negative column per row.

    logits (N, M) similarity / temperature; positives (N, M) bool. Returns the drawn column
    (N,) long and whether the row had any negative to draw from (N,) bool. A row whose
    candidates are all positives, or not finite (a diverged model), draws an arbitrary column;
    its ``valid`` is False and the caller gives that pair zero weight, so that a non-finite
    loss reaches the trainer's guard instead of failing inside the sampler.
    """
    with torch.no_grad():
        logits = logits.float()
        drawable = ~positives & torch.isfinite(logits)
        logits = logits.masked_fill(~drawable, float("-inf"))
        valid = drawable.any(dim=1)
        logits = torch.where(valid[:, None], logits, torch.zeros_like(logits))
        probabilities = F.softmax(logits, dim=1)
        return torch.multinomial(probabilities, 1, generator=generator).squeeze(1), valid


def matching_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                  normaliser: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted cross-entropy of the ITM head's 2-way logits (label 1 = match), summed and
    divided by ``normaliser``: by default the weights' sum (a weighted mean); pairs computed on
    W ranks pass (the weights' sum over all ranks) / W, so that the ranks' mean is the global one."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    per_pair = F.cross_entropy(logits.to(dtype), labels, reduction="none")
    weights = weights.to(dtype)
    return (per_pair * weights).sum() / (weights.sum() if normaliser is None else normaliser)


@register_objective
class Matching(Objective):
    name, terms, kinds = "itm", ("itm",), ("image", "region", "video")

    def forward(self, batch) -> dict:
        p = batch.pairing
        if self.config.itm_negatives == "global" and world_size() > 1:
            itm, dropped, negative_sim = self._global(batch, p.temperature.detach())
        else:
            itm, negative_sim = self._local(batch, p.temperature.detach())
            dropped = p.text.hidden.new_zeros(())
        return {"losses": {"itm": itm}, "figures": {"itm_dropped": dropped.float(), "itm_neg_sim": negative_sim}}

    def _local(self, batch, temperature):
        """Each pair, its vision with a hard-negative text and its text with a hard-negative
        vision of this rank's batch, through the fusion layers and the ITM head (labels 1, 0, 0)."""
        p = batch.pairing
        vision, text = p.vision, p.text
        with torch.no_grad():
            positives = pair_positives(p.keys, p.keys, self.config.same_text_positive)
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
        logits = batch.model.itm_logits(vision_tokens, vision_mask, text_hidden, text_mask)
        count, device = vision.tokens.shape[0], logits.device
        labels = (torch.arange(3 * count, device=device) < count).long()
        weights = torch.cat([torch.ones(count, dtype=torch.bool, device=device), vision_valid, text_valid])
        return matching_loss(logits, labels, weights), negative_sim

    def _global(self, batch, temperature):
        """ITM with hard negatives drawn from every rank's batch (the pairing's `excluded`: the
        positives and the padding among the gathered columns). Each pair is computed once, where
        its vision lives: this rank's pairs; its visions with their hard-negative texts, whose text
        rows are fetched from their owners; and the texts other ranks sent here with a
        hard-negative vision of this rank. Only text rows move (a fifth of a vision row): hidden
        states whose gradient goes back to their owners through the same exchange, or
        (``itm_exchange: token_ids``) token ids that the text tower encodes again here. The loss
        is divided by the global number of pairs / world size: the ranks' mean is the mean over
        every pair.

        Returns (loss, pairs left out for the exchange's capacity, mean similarity of the drawn
        negatives)."""
        settings, p, model = self.config, batch.pairing, batch.model
        vision, text, rows, text_ids = p.vision, p.text, p.rows, batch.fields["text_ids"]
        with torch.no_grad():
            v2t = vision.features.float() @ p.text_all.detach().float().t() / temperature
            t2v = text.features.float() @ p.vision_all.detach().float().t() / temperature
            negative_text, text_valid = sample_hard_negatives(v2t, p.excluded)
            negative_vision, vision_valid = sample_hard_negatives(t2v, p.excluded)
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
            text_hidden = torch.cat([text.hidden, model.text_hidden(moved[:, :length].long(), moved_mask)])
            text_mask = torch.cat([text.mask.bool(), moved_mask.bool()])
        else:  # one concatenation of the three, as before token ids: the gradients sum in the same order
            width = text.hidden.shape[-1]
            text_rows = torch.cat([payload, fetched, received.rows])
            text_hidden, text_mask = text_rows[..., :width], text_rows[..., width] > 0.5
        own = torch.arange(vision.tokens.shape[0], device=payload.device)
        partner = torch.cat([own, own, received.target])
        logits = model.itm_logits(vision.tokens.index_select(0, partner), vision.mask.index_select(0, partner),
                                  text_hidden, text_mask)
        count = own.shape[0]
        labels = (torch.arange(logits.shape[0], device=logits.device) < count).long()
        weights = torch.cat([torch.ones_like(text_valid), text_valid & fetched_placed, received.valid])
        total = all_reduce_sum(weights.sum(), CATEGORY)
        dropped = (text_valid & ~fetched_placed).sum() + received.dropped_sending + received.dropped_receiving
        return matching_loss(logits, labels, weights, normaliser=total / world), dropped, negative_sim
