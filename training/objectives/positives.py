"""Which (vision, text) pairs of a batch are positives.

A pair is positive when it is the sample itself, when both come from the same image on the
same rank (the texts of one region-batch image), or when the two texts are identical token for
token (``same_text``, across ranks). Positives are the ITC targets and are never drawn as ITM
negatives.

Across ranks the keys travel as one fixed-shape gather of three integers per row: the image,
a 62-bit hash of the text and whether the row is real or padding. Rank and position are implied
by the row's place in the gather.
"""
from __future__ import annotations

import dataclasses

import torch

from training.objectives.gather import gather_rows, pad_rows, world

# Two primes below 2**31: each per-position term (token id < 2**31 times a weight below the
# prime) fits in int64, and two independent hashes make a chance collision ~2**-62.
_PRIMES = (2_147_483_647, 2_147_483_629)
_weights: dict[tuple[int, str], torch.Tensor] = {}


def _mix(value: int) -> int:
    """splitmix64: a fixed pseudo-random 64-bit number per input."""
    value = (value + 0x9E3779B97F4A7C15) % 2**64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) % 2**64
    return value ^ (value >> 31)


def _hash_weights(length: int, device: torch.device) -> torch.Tensor:
    """(2, length): a weight in [1, prime) per prime and position, the same for a position
    whatever the length (so that texts padded to different lengths hash alike)."""
    key = (length, str(device))
    if key not in _weights:
        rows = [[1 + _mix(2 * position + k) % (prime - 1) for position in range(length)]
                for k, prime in enumerate(_PRIMES)]
        _weights[key] = torch.tensor(rows, dtype=torch.long).to(device)  # once per length and device
    return _weights[key]


def text_hash(text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """(N,) int64: equal for texts equal token for token (padding ignored), else equal with
    probability about 2**-62. Trailing zeros do not change it, as a shorter padding would not."""
    tokens = (text_ids * text_mask).long()
    weights = _hash_weights(tokens.shape[1], tokens.device)
    hashes = [((tokens * weights[k]) % prime).sum(dim=1) % prime for k, prime in enumerate(_PRIMES)]
    return hashes[0] * _PRIMES[1] + hashes[1]


@dataclasses.dataclass
class PairKeys:
    rank: torch.Tensor  # (N,) rank that holds the sample
    image: torch.Tensor  # (N,) image of the sample within its rank's batch
    text: torch.Tensor  # (N,) text_hash of its text
    valid: torch.Tensor  # (N,) bool: a real sample, not padding

    @classmethod
    def local(cls, text_ids, text_mask, image_index=None) -> PairKeys:
        n, device = text_ids.shape[0], text_ids.device
        index = torch.arange(n, device=device)
        return cls(
            rank=torch.full((n,), world()[0], dtype=torch.long, device=device),
            image=index if image_index is None else image_index.long(),
            text=text_hash(text_ids, text_mask),
            valid=torch.ones(n, dtype=torch.bool, device=device),
        )

    def gathered(self, rows: int | None = None) -> PairKeys:
        """Every rank's keys, each rank's padded to ROWS (default: its own count, which must
        then be the same on every rank)."""
        rows = rows or len(self.valid)
        packed = pad_rows(torch.stack([self.image, self.text, self.valid.long()], dim=1), rows)
        image, text, valid = gather_rows(packed).unbind(dim=1)
        ranks = torch.arange(len(valid), device=valid.device) // rows
        return PairKeys(rank=ranks, image=image, text=text, valid=valid.bool())


def pair_positives(rows: PairKeys, cols: PairKeys, same_text: bool) -> torch.Tensor:
    """(len(rows), len(cols)) bool: True where the row's vision and the column's text match.
    A sample is its own image when the batch gives no `image_index`, so the same-image rule
    includes the pair itself. The relation is symmetric (texts to visions alike). A padding
    column is never a positive (nor a candidate: callers leave out `~cols.valid`)."""
    same_rank = rows.rank[:, None] == cols.rank[None, :]
    positive = same_rank & (rows.image[:, None] == cols.image[None, :])
    if same_text:
        positive |= rows.text[:, None] == cols.text[None, :]
    return positive & cols.valid[None, :]


def queue_positives(image_id: torch.Tensor, text_hash: torch.Tensor, queue,
                    same_text: bool) -> torch.Tensor:
    """(R, Q) bool: the entries of a momentum feature queue (training/extensions/momentum.py)
    that are positives of each row (same image, or the same
    text where ``same_text``); an invalid entry is never a positive."""
    positive = image_id[:, None] == queue.image_id[None, :]
    if same_text:
        positive |= text_hash[:, None] == queue.text_hash[None, :]
    return positive & queue.valid[None, :]
