"""One batch of one data kind as the objectives see it: its fields, and what the model computes
from them, each computed once, when an objective first asks for it.

- ``vision``: the encoding the alignment objectives read, as the kind's `vision` says
  (data_pipeline/kinds): images through ``masked_image_encoding`` (the `mim` section's view),
  regions pooled from their images' tokens (``image_tokens``), frames through the video tower;
  ``reconstruction``: the MIM decoder's output for image batches (None without it).
- ``pairing``: the batch across ranks (``Pairing``): its texts encoded, which pairs are
  positives, every rank's features gathered at fixed shapes, the temperature. ITC, ITM, MLM and
  ITC consistency share it; it is computed on first use and in this order, so that the model's
  computations (and the random draws among them) come in the order they always came.
- ``text``: the pairing's text encoding, or the texts encoded alone where no objective pairs
  them (the box terms alone, in grounding fine-tuning).

The batch fields are those of the kind's collate, plus ``rows`` (the configured bound on rows
per batch of the kind on any rank, which the gathers pad to) and, with momentum distillation,
``sample_ids``. A teacher (the momentum extension, training/extensions/momentum.py) is given
for the steps where it takes part; the pairing then carries its vision encoding of the batch.
"""
from __future__ import annotations

import dataclasses
from functools import cached_property

import torch

from training.model import TextEncoding, VisionEncoding
from training.model.regions import first_text_of_region
from training.objectives.gather import gather_rows, gather_with_grad, pad_rows, world_size
from training.objectives.positives import PairKeys, pair_positives


@dataclasses.dataclass
class Pairing:
    vision: VisionEncoding  # this rank's rows
    text: TextEncoding
    teacher_vision: VisionEncoding | None  # the momentum copy's encoding of the rows, with a teacher
    rows: int  # every rank's rows are padded to this many in the gathers
    keys: PairKeys  # this rank's rows
    all_keys: PairKeys  # every rank's, gathered
    temperature: torch.Tensor
    # Every rank's features (rows x world size): with gradient back to their owners, or without
    # one where a teacher's features are the contrastive candidates.
    vision_all: torch.Tensor
    text_all: torch.Tensor
    positives: torch.Tensor  # (rows here, rows gathered) bool
    excluded: torch.Tensor  # positives and padding: never a negative
    share: torch.Tensor  # this rank's share of the global mean (real rows in all / world size)


class KindBatch:
    def __init__(self, name: str, kind, fields: dict, model, config, teacher=None):
        self.name = name  # the batch name (image, region, video, ...)
        self.kind = kind  # its DataKind
        self.fields = fields
        self.model = model
        self.config = config  # model.losses (objectives/settings.py)
        self.teacher = teacher

    @property
    def image_index(self) -> torch.Tensor | None:
        """(N,) the image of each text, where several texts share an image (regions)."""
        return self.fields.get("image_index")

    @cached_property
    def positive_group(self) -> torch.Tensor | None:
        """(N,) the group of each text whose members are positives of each other (besides
        identical texts): its image, or with `region_positives: region` its region (the texts of
        the same image with the same box, numbered by the first of them); None: each text alone."""
        index = self.image_index
        if index is None or self.config.region_positives == "image" or "boxes" not in self.fields:
            return index
        return first_text_of_region(index, self.fields["boxes"])

    @cached_property
    def image_tokens(self) -> torch.Tensor:
        """The vision tower's tokens of a region batch's images."""
        return self.model.vision(self.fields["images"])

    @cached_property
    def _encoded(self):
        model, fields, vision = self.model, self.fields, self.kind.vision
        if vision == "image":
            return model.masked_image_encoding(fields["images"])
        if vision == "regions":
            return model.encode_regions(self.image_tokens, fields["image_index"], fields["patch_mask"]), None
        return model.encode_video(fields["frames"]), None

    @property
    def vision(self) -> VisionEncoding:
        return self._encoded[0]

    @property
    def reconstruction(self):
        return self._encoded[1]

    @cached_property
    def pairing(self) -> Pairing:
        vision = self.vision
        teacher_vision = self.teacher.vision_encoding(self) if self.teacher is not None else None
        fields = self.fields
        text = self.model.encode_text(fields["text_ids"], fields["text_mask"])
        rows = fields.get("rows") or text.hidden.shape[0]
        keys = PairKeys.local(fields["text_ids"], fields["text_mask"], self.positive_group)
        all_keys = keys.gathered(rows)
        temperature = self.model.temperature()
        # With a teacher its features are the candidates; the gathered ones serve ITM only.
        if teacher_vision is None:
            vision_all = gather_with_grad(pad_rows(vision.features, rows))
            text_all = gather_with_grad(pad_rows(text.features, rows))
        else:
            vision_all = gather_rows(pad_rows(vision.features.detach(), rows))
            text_all = gather_rows(pad_rows(text.features.detach(), rows))
        positives = pair_positives(keys, all_keys, self.config.same_text_positive)
        share = all_keys.valid.sum() / world_size()
        excluded = positives | ~all_keys.valid[None, :]
        return Pairing(vision, text, teacher_vision, rows, keys, all_keys, temperature, vision_all, text_all,
                       positives, excluded, share)

    @cached_property
    def _own_text(self) -> TextEncoding:
        return self.model.encode_text(self.fields["text_ids"], self.fields["text_mask"])

    @property
    def text(self) -> TextEncoding:
        """The texts' encoding: the pairing's where an objective paired the batch."""
        if "pairing" in self.__dict__:
            return self.pairing.text
        return self._own_text

    @property
    def features(self) -> dict | None:
        """The paired rows' ITC features (grouping records them), where the batch was paired."""
        if "pairing" not in self.__dict__:
            return None
        return {"vision": self.pairing.vision.features, "text": self.pairing.text.features}
