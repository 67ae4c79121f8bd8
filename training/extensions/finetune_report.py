"""What a fine-tuning run reports, as a training extension: the held-out figures of the starting
weights, measured before the first step and kept in the checkpoints (so that a resumed run still
prints them), the figures after the last step beside them, and a model card that names the task,
the model folder it started from and both sets of figures. The fine-tuning task (training/tasks/
finetuning.py) says which held-out sets and metrics are its figures.
"""
from __future__ import annotations

import json
from pathlib import Path

from training.engine.extension import Extension


def format_figures(figures: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in figures.items())


def before_after(before: dict[str, float] | None, after: dict[str, float]) -> str:
    """`name before -> after` for each figure (`name after` where the before is unknown)."""
    before = before or {}
    return ", ".join(f"{name} {before[name]:.4f} -> {value:.4f}" if name in before else f"{name} {value:.4f}"
                     for name, value in after.items())


class FinetuneReport(Extension):
    name = "finetune_report"
    stateful = True

    def __init__(self, task):
        self.task = task  # a fine-tuning task (TrainingTask)
        self.before: dict[str, float] | None = None  # the starting weights' headline figures

    def state_dict(self) -> dict:
        return {"before": self.before}

    def load_state_dict(self, state: dict | None) -> None:
        self.before = None if state is None else state.get("before")

    def before_run(self, trainer) -> None:
        if trainer.step == 0:
            # The starting weights on the held-out sets: logged as the eval row of step 0.
            self.before = self.task.figures(trainer.evaluate(), trainer.config)
            if trainer.is_main:
                trainer.progress.echo(f"[finetune] {self.task.name} from {trainer.config.model['init_from']}, before "
                                      f"fine-tuning: {format_figures(self.before)}")

    def after_run(self, trainer, code: int) -> None:
        if code == 0 and trainer.is_main and trainer.last_eval_step == trainer.step:
            after = self.task.figures(trainer.last_eval, trainer.config)
            trainer.progress.echo(f"[finetune] {self.task.name}, held-out before -> after {trainer.step} steps: "
                                  f"{before_after(self.before, after)}")

    def describe_card(self, trainer, card) -> None:
        start = trainer.config.model["init_from"]
        card.source = {"kind": "fine-tuning", "task": self.task.name, "model": Path(start).name,
                       "model_source": _card_source(Path(start)), "run": trainer.config.run.name,
                       "config": Path(trainer.config.source).name, "metrics_before": self.before}


def _card_source(folder: Path) -> dict | None:
    """The source its own card gives for the model folder fine-tuning started from."""
    from training.folders.model_folder import CARD_FILE

    try:
        return json.loads((folder / CARD_FILE).read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, AttributeError):
        return None  # a weights file, or a folder without a readable card
