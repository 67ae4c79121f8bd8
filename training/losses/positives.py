"""Which (vision, text) pairs of a batch are positives.

A pair is positive when it is the sample itself, when both come from the same image on the
same rank (the texts of one region-batch image), or when the two texts are identical token for
token (``same_text``, across ranks). Positives are the ITC targets and are never drawn as ITM
negatives.
"""
from __future__ import annotations

import dataclasses

import torch

from training.losses.distributed import gather_padded, rank


@dataclasses.dataclass
class PairKeys:
    rank: torch.Tensor  # (N,) rank that holds the sample
    index: torch.Tensor  # (N,) position of the sample in its rank's batch
    image: torch.Tensor  # (N,) image of the sample within its rank's batch
    text: torch.Tensor  # (N, L) token ids with padding zeroed

    @classmethod
    def local(cls, text_ids, text_mask, image_index=None) -> PairKeys:
        n, device = text_ids.shape[0], text_ids.device
        index = torch.arange(n, device=device)
        return cls(
            rank=torch.full((n,), rank(), dtype=torch.long, device=device),
            index=index,
            image=index if image_index is None else image_index,
            text=text_ids * text_mask,
        )

    def gathered(self) -> PairKeys:
        return PairKeys(*(gather_padded(getattr(self, f.name)) for f in dataclasses.fields(self)))


def _same_text(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    length = max(a.shape[1], b.shape[1])
    a = torch.nn.functional.pad(a, (0, length - a.shape[1]))
    b = torch.nn.functional.pad(b, (0, length - b.shape[1]))
    return (a[:, None, :] == b[None, :, :]).all(dim=-1)


def pair_positives(rows: PairKeys, cols: PairKeys, same_text: bool) -> torch.Tensor:
    """(len(rows), len(cols)) bool: True where the row's vision and the column's text match.
    A sample is its own image when the batch gives no `image_index`, so the same-image rule
    includes the pair itself."""
    same_rank = rows.rank[:, None] == cols.rank[None, :]
    positive = same_rank & (rows.image[:, None] == cols.image[None, :])
    if same_text:
        positive |= _same_text(rows.text, cols.text)
    return positive
