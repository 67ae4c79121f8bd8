"""The trained-keys log (`logging.trained_keys`) as a training extension: one JSONL file per
rank, OUTPUT/trained_keys/rankNNNNN.jsonl, a line per optimizer step with the corpus, sample
keys and epochs of each batch the rank trained on, for coverage audits.

The file's length at a checkpoint is the extension's state; a resume cuts the file back to it,
so that the steps after the checkpoint are logged once, as they come again. A checkpoint
written without it (by version 0.1.0, or with the log off) is resumed by dropping the lines of
the steps after the checkpoint's.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from training.engine.extension import Extension
from training.engine.metrics import drop_rows_after

FOLDER = "trained_keys"


def json_line(step: int, batches: dict) -> str:
    """The line of optimizer step STEP + 1: per data kind its corpus, keys and epochs."""
    return json.dumps({"step": step + 1, **{kind: {"corpus": batch.get("corpus"), "keys": list(batch.get("keys", ())),
                                                  "epochs": list(batch.get("epochs", ()))}
                                           for kind, batch in batches.items()}}) + "\n"


class TrainedKeysLog(Extension):
    name = "trained_keys"
    stateful = True

    def __init__(self):
        self.restored_bytes: int | None = None
        self.file = None

    def setup(self, trainer) -> None:
        self.path = Path(trainer.output_dir) / FOLDER / f"rank{trainer.rank:05d}.jsonl"

    def load_state_dict(self, state: dict | None) -> None:
        self.restored_bytes = None if state is None else int(state["bytes"])

    def load_resharded(self, states: list[dict | None]) -> None:
        # Another world size: this rank's file is not the file of the rank of the same number
        # before; its lines after the checkpoint's step go.
        self.restored_bytes = None

    def after_restore(self, trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.restored_bytes is not None and self.path.is_file() and self.path.stat().st_size >= self.restored_bytes:
            os.truncate(self.path, self.restored_bytes)
        else:
            drop_rows_after(self.path, trainer.step)
        self.file = open(self.path, "a", buffering=1)

    def before_forward(self, trainer, batches: dict, inputs: dict) -> None:
        self.file.write(json_line(trainer.step, batches))

    def state_dict(self) -> dict:
        return {"bytes": self.file.tell() if self.file is not None else 0}

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
