"""A task: the model with the objectives of a run. DeepSpeed wraps the task; its forward takes
the step's batches by name and returns the weighted loss:

    task = Task(model, parse_loss_settings(model_config["losses"]), batches=("image", "region", "video"))
    out = task({"image": image_batch, "region": region_batch})
    out["loss"]                      # sum over batches and terms of weight x value
    out["losses"]["region"]["bbox"]  # each batch's loss terms, logged as region/bbox
    out["figures"]["image"]          # what the objectives log beside them (itc_hardness, ...)
    out["features"]["image"]         # the paired rows' ITC features (grouping records them)

Each batch is read as its data kind says (data_pipeline/kinds: `batch`, `vision`) through a
``KindBatch`` (training/objectives/kind_batch.py), in the registry's order of kinds; on it run
the objectives that apply to that batch and have a term of nonzero weight, in the registry's
order of objectives. Nothing in a task makes the host wait for the device.

Parameters are named `model.*` (the model, as a model folder names them under `model.`),
`objectives.NAME.*` (an objective's own) and `momentum.*` (momentum distillation's copy,
attached by its extension). A checkpoint written before tasks existed named the model's
parameters without the `model.` prefix; loading renames them.
"""
from __future__ import annotations

from torch import nn

from data_pipeline.kinds import KINDS
from training.objectives import Objective, objective_classes
from training.objectives.kind_batch import KindBatch
from training.objectives.settings import LossSettings, parse_loss_settings

# The model's parts, named at the top of a checkpoint written by version 0.1.0.
LAYOUT_0_1_0_MODEL_PARTS = ("vision", "video", "text", "fusion", "vision_proj", "text_proj", "temperature", "itm_head",
                            "bbox_head", "mlm_head", "mim")


def upgraded_parameter_name(name: str) -> str:
    """The name under this task of a parameter a version-0.1.0 checkpoint names NAME."""
    return f"model.{name}" if name.split(".", 1)[0] in LAYOUT_0_1_0_MODEL_PARTS else name


def _upgrade_state_names(state_dict, prefix, *args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        name = upgraded_parameter_name(key[len(prefix):])
        if prefix + name != key:
            state_dict[prefix + name] = state_dict.pop(key)


class Task(nn.Module):
    def __init__(self, model: nn.Module, config: LossSettings, batches: tuple[str, ...] | None = None):
        """MODEL with the registered objectives that run on any of BATCHES (batch names; all of
        the registered kinds' by default) under the loss settings CONFIG."""
        super().__init__()
        self.model = model
        self.config = config
        batches = tuple(kind.batch for kind in KINDS.values()) if batches is None else tuple(batches)
        # batch name -> the names of the objectives that run on it
        self.plan: dict[str, list[str]] = {}
        objectives: dict[str, Objective] = {}
        for cls in objective_classes():
            for batch in cls.kinds:
                if batch in batches and cls.runs_on(config.weights.get(batch, {}), model):
                    if cls.name not in objectives:
                        objectives[cls.name] = cls(config, model)
                    self.plan.setdefault(batch, []).append(cls.name)
        self.objectives = nn.ModuleDict(objectives)
        # Momentum distillation's teacher (training/extensions/momentum.py) on the steps it takes part.
        self.teacher = None
        self._register_load_state_dict_pre_hook(_upgrade_state_names)

    @classmethod
    def for_model(cls, model: nn.Module, batches: tuple[str, ...] | None = None) -> Task:
        """The task of MODEL under the loss settings of its own config (`model.losses`)."""
        return cls(model, parse_loss_settings(model.config.losses, "model.losses"), batches)

    def forward(self, batches: dict[str, dict]) -> dict:
        teacher = self.teacher if self.teacher is not None and self.teacher.active else None
        losses, figures, features = {}, {}, {}
        for kind in KINDS.values():
            fields = batches.get(kind.batch)
            if fields is None:
                continue
            batch = KindBatch(kind.batch, kind, fields, self.model, self.config, teacher)
            losses[kind.batch], figures[kind.batch] = {}, {}
            for name in self.plan.get(kind.batch, ()):
                out = self.objectives[name](batch)
                losses[kind.batch].update(out["losses"])
                figures[kind.batch].update(out["figures"])
            if batch.features is not None:
                features[kind.batch] = batch.features
        weights = self.config.weights
        total = sum(weights[kind][term] * value for kind, terms in losses.items() for term, value in terms.items())
        return {"loss": total, "losses": losses, "figures": figures, "features": features}
