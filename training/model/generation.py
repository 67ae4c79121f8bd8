"""Caption generation with the causal decoder (X2VLM.decode): greedy and beam search, batched.

Token ids only; the tokenizer's side (which ids start, end and pad a text, which may never be
generated, turning ids into words) is the caller's (training/inference.py). Every step runs the
decoder over the whole prefix (no key/value cache): a caption is a few dozen tokens, and the
prefix's positions give exactly what training computed for them.

Beam search keeps ``beam`` hypotheses per image, ranked by the sum of their tokens' log
probabilities; a hypothesis that produced the end token stays in the beam unchanged (its only
continuation is padding, at log probability 0). Among the final hypotheses the best is chosen by
sum / length ** ``length_penalty`` (length: generated tokens including the end token), as
Hugging Face's beam search scores finished hypotheses. ``beam=1`` is greedy decoding.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from training.model.x2vlm import VisionEncoding


@torch.no_grad()
def generate(model, vision: VisionEncoding, *, bos_id: int, eos_id: int, pad_id: int, max_len: int,
             beam: int = 1, prompt: Sequence[int] = (), banned: Sequence[int] = (),
             length_penalty: float = 1.0) -> list[list[int]]:
    """For each of the N visions, the ids generated after [bos_id, *prompt], without the end
    token: at most ``max_len`` of them. ``banned`` ids (padding, [MASK], [UNK], ...) are never
    generated. Returns N lists."""
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    count = vision.tokens.shape[0]
    device = vision.tokens.device
    vocab = model.config.text.vocab_size
    allowed = vocab - len(set(banned) - {eos_id})
    if beam > allowed:
        raise ValueError(f"beam {beam} exceeds the {allowed} tokens that may be generated")
    tokens = vision.tokens.repeat_interleave(beam, dim=0)
    vision_mask = vision.mask.repeat_interleave(beam, dim=0)
    prefix = torch.tensor([bos_id, *prompt], dtype=torch.long, device=device)
    ids = prefix.expand(count * beam, -1).clone()
    # Only the first hypothesis of each image is live at the start: the others would repeat it.
    scores = torch.full((count, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0
    finished = torch.zeros(count * beam, dtype=torch.bool, device=device)
    lengths = torch.zeros(count * beam, dtype=torch.long, device=device)
    ban = torch.zeros(vocab, dtype=torch.bool, device=device)
    ban[list(banned)] = True
    ban[eos_id] = False
    pad_only = torch.full((vocab,), float("-inf"), device=device)
    pad_only[pad_id] = 0.0
    rows = torch.arange(count, device=device)[:, None] * beam
    for _ in range(max_len):
        hidden = model.decode(tokens, vision_mask, ids, torch.ones_like(ids))
        log_probs = model.mlm_head(hidden[:, -1]).float().log_softmax(dim=-1)
        log_probs = log_probs.masked_fill(ban, float("-inf"))
        log_probs = torch.where(finished[:, None], pad_only, log_probs)
        total = (scores.reshape(-1, 1) + log_probs).reshape(count, beam * vocab)
        scores, choice = total.topk(beam, dim=1)
        source = (rows + choice // vocab).flatten()
        token = (choice % vocab).flatten()
        was_finished = finished[source]
        ids = torch.cat([ids[source], token[:, None]], dim=1)
        lengths = lengths[source] + (~was_finished).long()
        finished = was_finished | (token == eos_id)
        if bool(finished.all()):
            break
    normalised = scores / lengths.view(count, beam).clamp_min(1).float() ** length_penalty
    best = (rows[:, 0] + normalised.argmax(dim=1)).tolist()
    out = []
    for row in ids[best, len(prefix):].tolist():
        out.append(row[:row.index(eos_id)] if eos_id in row else row)
    return out


def special_ids(text) -> dict:
    """generate()'s token arguments for the tokenizer of TEXT (the data pipeline's TextEncoder)."""
    tokenizer = text.tokenizer
    banned = {text.pad_id, text.mask_id, text.cls_id, tokenizer.unk_token_id, tokenizer.bos_token_id} - {None, text.sep_id}
    return {"bos_id": text.cls_id, "eos_id": text.sep_id, "pad_id": text.pad_id, "banned": sorted(banned)}
