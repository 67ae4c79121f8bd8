"""The trainer's side of grouped mini-batches (data.grouping): each trained sample's projected
features, recorded under its key for the loader to group with in later steps.

A sample's record is the normalised sum of its ITC-space vision and text features (for a
region batch, over every text of its image), so that the cosine of two records sums the
image-image, text-text and cross similarities ITC scores; stored as float16, `embed_dim`
wide (256 in X²-VLM: 512 bytes and about 40 of header and key per sample and epoch).

The vectors are made on the device during the step and copied to the host in one copy after
the step's one transfer of its figures: the device has finished the step's work by then, so
the copy waits for nothing but itself (a few hundred kilobytes at X²-VLM's batch). The
record files' sizes are part of the
trainer's checkpoint state; a resume cuts the files back to them (see
data_pipeline/loader/feature_records.py).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from data_pipeline.loader.feature_records import FeatureRecordWriter, restore

FOLDER = "grouping_features"


def sample_vectors(features: dict, count: int, image_index: torch.Tensor | None) -> torch.Tensor:
    """(COUNT, E) float16 on the device: per sample, the normalised sum of its rows' vision and
    text features (rows map to samples through IMAGE_INDEX; one row per sample without it)."""
    rows = (features["vision"].detach().float() + features["text"].detach().float())
    if image_index is not None:
        summed = rows.new_zeros(count, rows.shape[1])
        rows = summed.index_add(0, image_index.long(), rows)
    return F.normalize(rows, dim=1).half()


class FeatureRecorder:
    def __init__(self, output_dir: Path, rank: int, world_size: int):
        self.root = Path(output_dir) / FOLDER
        self.rank, self.world_size = rank, world_size
        self.writer = FeatureRecordWriter(self.root, rank, world_size)
        self.staged: list[tuple[str, list[int], list[str], int]] = []
        self.vectors: list[torch.Tensor] = []

    def stage(self, step: int, batches: dict, inputs: dict, features: dict, kinds: dict[str, str]) -> None:
        """Keeps one micro-step's sample vectors, on the device. STEP: the loader's step that drew
        BATCHES (corpus kind -> batch); INPUTS: the batches on the device (model kind -> fields);
        FEATURES: the model's `features`; KINDS: corpus kind -> model kind."""
        for kind, batch in batches.items():
            model_kind = kinds[kind]
            keys = list(batch.get("keys", ()))
            if not keys or model_kind not in features:
                continue
            vectors = sample_vectors(features[model_kind], len(keys), inputs[model_kind].get("image_index"))
            self.staged.append((batch["corpus"], list(batch["epochs"]), keys, step))
            self.vectors.append(vectors)

    def write(self) -> None:
        """Appends the kept records; called after the step's transfer of its figures."""
        if not self.staged:
            return
        host = torch.cat(self.vectors).cpu().numpy()  # every kind is embed_dim wide
        at = 0
        for corpus, epochs, keys, step in self.staged:
            array = host[at:at + len(keys)]
            at += len(keys)
            for epoch in sorted(set(epochs)):
                chosen = [i for i, e in enumerate(epochs) if e == epoch]
                self.writer.append(corpus, epoch, step, [keys[i] for i in chosen], array[chosen])
        self.staged, self.vectors = [], []
        self.writer.flush()

    def state_dict(self) -> dict:
        return {"sizes": self.writer.sizes()}

    def load_state_dicts(self, states: list[dict]) -> list[str]:
        """Cuts the record files this rank answers for back to the checkpoint (the states of every
        saving rank, or this rank's alone when the world size is unchanged); notes on lost writes."""
        sizes: dict[str, int] = {}
        for state in states:
            sizes.update(state["sizes"])
        self.writer.close()
        return restore(self.root, sizes, self.rank, self.world_size)

    def close(self) -> None:
        self.writer.close()
