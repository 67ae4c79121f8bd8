"""The trainer's extension points: an optional training feature (momentum distillation, grouping's
feature records, the trained-keys log, fine-tuning's before / after report) is an `Extension`
given to the trainer, which calls its hooks at fixed points of the run and saves its state in
every checkpoint under its `name` (training/engine/checkpoint.py), so that the trainer's step
names no optional feature. Every hook does nothing unless overridden.

The order of a run (training/engine/trainer.py):

    setup                     the process group is up and the output folder held
    loader_options            options for the data loader, before it is built
    before_engine(task)       weights loaded, before the optimizer and DeepSpeed
    after_engine              DeepSpeed built
    load_state_dict / load_resharded   on a resume, extensions before the trainer's own state
    after_restore             checkpoint loaded (or none), before the first step
    before_run
    per step:   before_step, then per micro-step before_forward(batches, inputs) and
                after_forward(batches, inputs, out); after_optimizer_step (the update applied,
                nothing read on the host yet); after_step (the step's figures read)
    after_run(code)
    close

`describe_card(card)` adds to the model card of the weights in memory.
"""
from __future__ import annotations


class Extension:
    name: str = ""  # its state's name in a checkpoint; required when it has state
    stateful: bool = False  # whether state_dict / load_state_dict are to be saved and restored

    def setup(self, trainer) -> None:
        pass

    def loader_options(self, trainer) -> dict:
        return {}

    def before_engine(self, trainer, task) -> None:
        pass

    def after_engine(self, trainer) -> None:
        pass

    def after_restore(self, trainer) -> None:
        pass

    def before_run(self, trainer) -> None:
        pass

    def before_step(self, trainer) -> None:
        pass

    def before_forward(self, trainer, batches: dict, inputs: dict) -> None:
        pass

    def after_forward(self, trainer, batches: dict, inputs: dict, out: dict) -> None:
        pass

    def after_optimizer_step(self, trainer) -> None:
        pass

    def after_step(self, trainer) -> None:
        pass

    def after_run(self, trainer, code: int) -> None:
        pass

    def describe_card(self, trainer, card) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict | None) -> None:
        """STATE as saved; None where the checkpoint holds none under this name."""

    def load_resharded(self, states: list[dict | None]) -> None:
        """The states of every rank of a run with another world size (None where one has none)."""
        self.load_state_dict(states[0])

    def close(self) -> None:
        pass
