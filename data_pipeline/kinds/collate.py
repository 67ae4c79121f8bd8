"""Per-kind batching of transformed samples into the tensors the model reads.

Images and frames stay uint8: a quarter of the bytes to pass between processes and to
the GPU, and no per-pixel float work on the loader's cores. The vision tower normalises
them (CLIP mean and std) on the device as its first step.

Region batches are ragged on purpose: B images carry R >= B region texts, each pointing
at its image through `image_index`; nothing is padded with duplicated pairs, which would
put copies of a positive among the negatives of the contrastive loss. `rows_per_batch` is the
most texts a training batch of a kind can hold: the losses pad to it where ranks exchange rows,
so that every rank's share has the same shape.

Every batch with texts carries `mlm_positions` (N, K) long: each text's masked positions first,
then unmasked ones, K the most masks of any text in the batch. The MLM head then runs on K
positions per text at a shape the host knows, instead of selecting them by a boolean mask
(a data-dependent shape, which makes the host wait for the device).

Each data kind's record (data_pipeline/kinds) names its collate for training and for evaluation.
Evaluation batches (for the data spec's `training: false`) carry every text
of each sample, ragged the same way, and the texts themselves:
- retrieval: `images` (B, 3, H, W) or `frames` (B, F, 3, H, W); the text fields (T, L);
  `text_sample` (T,) long, the batch position of each text's sample; `texts` (T,), `keys` (B,);
- grounding: the region batch above plus `texts` (R,).
"""
from __future__ import annotations

import numpy as np
import torch

from . import data_kind
from ..text.masking import IGNORE_INDEX

TEXT_FIELDS = ("text_ids", "text_mask", "mlm_ids", "mlm_labels")


def _stack_images(images: list[np.ndarray]) -> torch.Tensor:
    """(H, W, 3) uint8 pixels -> (B, 3, H, W), stored channels-last: stacking the pixels
    as decoded is a plain copy, where a (3, H, W) layout is a transposing one."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def mlm_positions(labels: np.ndarray) -> np.ndarray:
    """(N, K): each row's masked positions (label not IGNORE_INDEX) in order, then its unmasked
    ones; K is the most masked positions of any row, at least 1."""
    masked = labels != IGNORE_INDEX
    most = int(masked.sum(axis=1).max()) if len(labels) else 0
    return np.argsort(~masked, axis=1, kind="stable")[:, :max(most, 1)]


def _with_positions(texts: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    texts["mlm_positions"] = mlm_positions(texts["mlm_labels"])
    return {name: torch.from_numpy(value) for name, value in texts.items()}


def _stack_text(samples: list[dict]) -> dict[str, torch.Tensor]:
    return _with_positions({name: np.stack([s[name] for s in samples]) for name in TEXT_FIELDS})


def collate_image_text(samples: list[dict]) -> dict:
    return {"images": _stack_images([s["image"] for s in samples]), **_stack_text(samples),
            "keys": [s["key"] for s in samples]}


def _stack_clips(clips: list[np.ndarray]) -> torch.Tensor:
    """(F, H, W, 3) clips -> (B, F, 3, H, W), stored channels-last like the images."""
    return torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3)


def collate_video_text(samples: list[dict]) -> dict:
    return {"frames": _stack_clips([s["frames"] for s in samples]), **_stack_text(samples),
            "keys": [s["key"] for s in samples]}


def _ragged_text(samples: list[dict]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Text fields of samples with several texts each (T_i, L) -> (sum T_i, L), and the
    batch position of each text's sample."""
    counts = [len(s["text_ids"]) for s in samples]
    owner = torch.repeat_interleave(torch.arange(len(samples)), torch.tensor(counts))
    return _with_positions({name: np.concatenate([s[name] for s in samples]) for name in TEXT_FIELDS}), owner


def collate_region(samples: list[dict]) -> dict:
    texts, image_index = _ragged_text(samples)
    batch = {"images": _stack_images([s["image"] for s in samples]), "image_index": image_index, **texts}
    batch["boxes"] = torch.from_numpy(np.concatenate([s["boxes"] for s in samples]))
    batch["patch_mask"] = torch.from_numpy(np.concatenate([s["patch_mask"] for s in samples]))
    batch["keys"] = [s["key"] for s in samples]
    return batch


def rows_per_batch(corpora) -> int:
    """The most texts a training batch of these corpora (of one kind) holds: batch size x the
    most texts a sample of the kind gives (one caption; up to `max_regions` region texts)."""
    return max(c.batch_size * data_kind(c.kind).texts_per_sample(c.options) for c in corpora)


def _retrieval(samples: list[dict], media: dict[str, torch.Tensor]) -> dict:
    texts, text_sample = _ragged_text(samples)
    return {**media, **texts, "text_sample": text_sample, "texts": [t for s in samples for t in s["texts"]],
            "keys": [s["key"] for s in samples]}


def collate_image_text_eval(samples: list[dict]) -> dict:
    return _retrieval(samples, {"images": _stack_images([s["image"] for s in samples])})


def collate_video_text_eval(samples: list[dict]) -> dict:
    return _retrieval(samples, {"frames": _stack_clips([s["frames"] for s in samples])})


def collate_region_eval(samples: list[dict]) -> dict:
    return {**collate_region(samples), "texts": [t for s in samples for t in s["texts"]]}
