"""Weights & Biases reporting (`logging.report_to: [wandb]`), on rank 0 only: every row that
goes to metrics.jsonl (train and eval rows, as `train/...` and `eval/...` against the trainer's
`step`), and the run config. `wandb` is imported here and only when the run asks for it.

The wandb run's id is kept in OUTPUT/wandb_run_id: a run resumed from its output folder
continues the same wandb run (offline, its records go into another folder under OUTPUT/wandb
with the same id, and `wandb sync` joins them). Steps between the last checkpoint and a crash
are logged again after the resume with the same values (a resume repeats them bitwise); the
trainer's `step` is each row's x-axis, so they land on the same steps.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

RUN_ID_FILE = "wandb_run_id"
_RUN_ID = re.compile(r"^[a-z0-9]{8,64}$")


def run_id(output_dir: Path) -> str:
    """The output folder's wandb run id: the kept one, or a new one written atomically."""
    path = output_dir / RUN_ID_FILE
    try:
        kept = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        kept = ""
    if _RUN_ID.match(kept):
        return kept
    new = os.urandom(8).hex()
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new + "\n", encoding="utf-8")
    tmp.replace(path)
    return new


class WandbReporter:
    def __init__(self, output_dir: Path, settings, run_name: str, run_config: dict):
        import wandb

        self.run = wandb.init(project=settings.project, entity=settings.entity, mode=settings.mode,
                              tags=list(settings.tags) or None, name=run_name, id=run_id(output_dir),
                              resume="allow", dir=str(output_dir), config=run_config)
        self.run.define_metric("step")
        self.run.define_metric("train/*", step_metric="step")
        self.run.define_metric("eval/*", step_metric="step")

    def log(self, row: dict, prefix: str) -> None:
        values = {f"{prefix}/{key}": value for key, value in row.items()
                  if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}
        self.run.log({"step": row["step"], **values})

    def close(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)
