"""Fine-tuning as the one trainer with a task preset (training/finetune_tasks.py).

The trainer is the pre-training Trainer: the same DeepSpeed engine, data stream, checkpoints
and exact resume. Fine-tuning adds what a fine-tuning run reports: the held-out figures of the
starting weights, measured before the first step and kept in the checkpoints (so that a
resumed run still prints them), the figures after the last step beside them, and a model card
that names the task, the model folder it started from and both sets of figures.
"""
from __future__ import annotations

import json
from pathlib import Path

from training.finetune_tasks import TrainingTask
from training.run_config import RunConfig
from training.trainer import Trainer


def format_figures(figures: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in figures.items())


def before_after(before: dict[str, float] | None, after: dict[str, float]) -> str:
    """`name before -> after` for each figure (`name after` where the before is unknown)."""
    before = before or {}
    return ", ".join(f"{name} {before[name]:.4f} -> {value:.4f}" if name in before else f"{name} {value:.4f}"
                     for name, value in after.items())


class FinetuneTrainer(Trainer):
    def __init__(self, config: RunConfig, resume: str | None, task: TrainingTask):
        self.task = task
        self.before: dict[str, float] | None = None  # the starting weights' headline figures
        super().__init__(config, resume)

    # -- state that survives a restart: the trainer's, and the figures before fine-tuning --------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "finetune_before": self.before}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.before = state.get("finetune_before")

    def load_resharded(self, states: list[dict]) -> None:
        super().load_resharded(states)
        self.before = states[0].get("finetune_before")

    def run(self) -> int:
        if self.step == 0:
            # The starting weights on the held-out sets: logged as the eval row of step 0.
            self.before = self.task.figures(self.evaluate(), self.config)
            if self.is_main:
                self.progress.echo(f"[finetune] {self.task.name} from {self.config.model['init_from']}, before "
                                   f"fine-tuning: {format_figures(self.before)}")
        code = super().run()
        if code == 0 and self.is_main and self.last_eval_step == self.step:
            after = self.task.figures(self.last_eval, self.config)
            self.progress.echo(f"[finetune] {self.task.name}, held-out before -> after {self.step} steps: "
                               f"{before_after(self.before, after)}")
        return code

    def model_card(self):
        card = super().model_card()
        start = self.config.model["init_from"]
        card.source = {"kind": "fine-tuning", "task": self.task.name, "model": str(Path(start).resolve()),
                       "model_source": _card_source(Path(start)), "run": self.config.run.name,
                       "path": str(self.output_dir.resolve()), "config": self.config.source,
                       "metrics_before": self.before}
        return card


def _card_source(folder: Path) -> dict | None:
    """The source its own card gives for the model folder fine-tuning started from."""
    from training.model_folder import CARD_FILE

    try:
        return json.loads((folder / CARD_FILE).read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, AttributeError):
        return None  # a weights file, or a folder without a readable card
