"""The trainer's side of grouped mini-batches (data.grouping), as a training extension: each
trained sample's projected features, recorded under its key for the loader to group with in
later steps.

A sample's record is the normalised sum of its ITC-space vision and text features (for a
region batch, over every text of its image), so that the cosine of two records sums the
image-image, text-text and cross similarities ITC scores; stored as float16, `embed_dim`
wide (256 in X²-VLM: 512 bytes and about 40 of header and key per sample and epoch).

The vectors are made on the device during the step and copied to the host in one copy after
the step's one transfer of its figures: the device has finished the step's work by then, so
the copy waits for nothing but itself (a few hundred kilobytes at X²-VLM's batch). The
record files' sizes are the extension's checkpoint state; a resume cuts the files back to them
(see data_pipeline/loader/feature_records.py) before the data stream rereads them.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from data_pipeline.kinds import data_kind
from data_pipeline.loader.feature_records import FeatureRecordWriter, restore
from training.engine.extension import Extension

FOLDER = "grouping_features"


def sample_vectors(features: dict, count: int, image_index: torch.Tensor | None) -> torch.Tensor:
    """(COUNT, E) float16 on the device: per sample, the normalised sum of its rows' vision and
    text features (rows map to samples through IMAGE_INDEX; one row per sample without it)."""
    rows = (features["vision"].detach().float() + features["text"].detach().float())
    if image_index is not None:
        summed = rows.new_zeros(count, rows.shape[1])
        rows = summed.index_add(0, image_index.long(), rows)
    return F.normalize(rows, dim=1).half()


class GroupingFeatures(Extension):
    name = "grouping_features"
    stateful = True

    def __init__(self):
        self.writer = None
        self.staged: list[tuple[str, list[int], list[str], int]] = []
        self.vectors: list[torch.Tensor] = []

    def setup(self, trainer) -> None:
        self.root = Path(trainer.output_dir) / FOLDER
        self.rank, self.world_size = trainer.rank, trainer.world_size
        self.writer = FeatureRecordWriter(self.root, self.rank, self.world_size)

    def loader_options(self, trainer) -> dict:
        # The loader reads the records of steps every rank has written: two optimizer steps back
        # (a rank starting step s has seen every rank in step s - 1).
        return {"feature_dir": self.root, "records_lag": 2 * trainer.config.optim.grad_accum}

    def after_forward(self, trainer, batches: dict, inputs: dict, out: dict) -> None:
        self.stage(trainer.loader.step, batches, inputs, out["features"])

    def after_step(self, trainer) -> None:
        self.write()  # after the step's transfer of its figures

    def stage(self, step: int, batches: dict, inputs: dict, features: dict) -> None:
        """Keeps one micro-step's sample vectors, on the device. STEP: the loader's step that drew
        BATCHES (data kind -> batch); INPUTS: the batches on the device (batch name -> fields);
        FEATURES: the task's `features` (batch name -> vision and text features)."""
        for kind, batch in batches.items():
            name = data_kind(kind).batch
            keys = list(batch.get("keys", ()))
            if not keys or name not in features:
                continue
            vectors = sample_vectors(features[name], len(keys), inputs[name].get("image_index"))
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

    def load_state_dict(self, state: dict | None) -> None:
        self.load_resharded([state])

    def load_resharded(self, states: list[dict | None]) -> None:
        """Cuts the record files this rank answers for back to the checkpoint (the states of every
        saving rank, or this rank's alone when the world size is unchanged). A checkpoint written
        with grouping off leaves the files as they are."""
        if any(state is None for state in states):
            return
        sizes: dict[str, int] = {}
        for state in states:
            sizes.update(state["sizes"])
        self.writer.close()
        for note in restore(self.root, sizes, self.rank, self.world_size):
            print(f"[grouping] rank {self.rank}: {note}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
