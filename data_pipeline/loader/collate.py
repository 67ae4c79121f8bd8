"""Per-kind batching of transformed samples into the tensors the model reads.

Images and frames stay uint8: a quarter of the bytes to pass between processes and to
the GPU, and no per-pixel float work on the loader's cores. The vision tower normalises
them (CLIP mean and std) on the device as its first step.

Region batches are ragged on purpose: B images carry R >= B region texts, each pointing
at its image through `image_index`; nothing is padded with duplicated pairs, which would
put copies of a positive among the negatives of the contrastive loss.

Evaluation batches (`EVAL_COLLATE`, for the data spec's `training: false`) carry every text
of each sample, ragged the same way, and the texts themselves:
- retrieval: `images` (B, 3, H, W) or `frames` (B, F, 3, H, W); the text fields (T, L);
  `text_sample` (T,) long, the batch position of each text's sample; `texts` (T,), `keys` (B,);
- grounding: the region batch above plus `texts` (R,).
"""
from __future__ import annotations

import numpy as np
import torch

TEXT_FIELDS = ("text_ids", "text_mask", "mlm_ids", "mlm_labels")


def _stack_images(images: list[np.ndarray]) -> torch.Tensor:
    """(H, W, 3) uint8 pixels -> (B, 3, H, W), stored channels-last: stacking the pixels
    as decoded is a plain copy, where a (3, H, W) layout is a transposing one."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def _stack_text(samples: list[dict]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.stack([s[name] for s in samples])) for name in TEXT_FIELDS}


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
    return {name: torch.from_numpy(np.concatenate([s[name] for s in samples])) for name in TEXT_FIELDS}, owner


def collate_region(samples: list[dict]) -> dict:
    texts, image_index = _ragged_text(samples)
    batch = {"images": _stack_images([s["image"] for s in samples]), "image_index": image_index, **texts}
    batch["boxes"] = torch.from_numpy(np.concatenate([s["boxes"] for s in samples]))
    batch["patch_mask"] = torch.from_numpy(np.concatenate([s["patch_mask"] for s in samples]))
    batch["keys"] = [s["key"] for s in samples]
    return batch


COLLATE = {"image_text": collate_image_text, "region": collate_region, "video_text": collate_video_text}


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


EVAL_COLLATE = {"image_text": collate_image_text_eval, "region": collate_region_eval,
                "video_text": collate_video_text_eval}
