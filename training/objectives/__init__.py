"""Training objectives: each loss term is an objective in its own module, registered here.

An objective declares its loss terms, the batches it applies to (by the data kinds' batch
names), which of its terms weigh 0 unless a config gives them a weight, and optionally a
settings section of its own (`model.losses.NAME`). A task (training/tasks/task.py) runs, for
each batch of a step, the objectives that have a term of nonzero weight for it, in the order
they are registered here; each returns its losses and the figures it logs, per batch:

    @register_objective
    class LengthRegression(Objective):
        name, terms, kinds = "length", ("length_mse",), ("image",)

        def __init__(self, config, model):
            super().__init__(config, model)
            self.head = torch.nn.Linear(model.config.embed_dim, 1)

        def forward(self, batch: KindBatch) -> dict:
            predicted = self.head(batch.pairing.vision.features).squeeze(1)
            return {"losses": {"length_mse": F.mse_loss(predicted.float(), batch.fields["length"])},
                    "figures": {}}

The result is a plain dict so that DeepSpeed ZeRO-3 finds the tensors in it (it gathers an
objective's own parameters again for the backward pass through hooks on them); an objective's
parameters live in submodules. The built-in objectives are registered, in this order, the first
time the registry is read: ITC, ITC consistency, ITM, MLM, box, MIM, LM. The order is the order
of their terms in the logged losses and in the weighted sum of the loss.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, ClassVar

from torch import nn

if TYPE_CHECKING:
    from training.objectives.kind_batch import KindBatch
    from training.objectives.settings import LossSettings

BUILTIN = ("itc", "itc_consistency", "itm", "mlm", "box", "mim", "lm")


class Objective(nn.Module):
    name: ClassVar[str]  # unique; the key of its settings section, if it has one
    terms: ClassVar[tuple[str, ...]]  # the loss terms it returns: `model.losses.weights.BATCH.TERM`
    kinds: ClassVar[tuple[str, ...]]  # the batches it applies to, by batch name (image, region, ...)
    optional: ClassVar[tuple[str, ...]] = ()  # terms that weigh 0 (and are not computed) unless configured
    settings: ClassVar[type | None] = None  # the dataclass of `model.losses.NAME`, if it has settings

    def __init__(self, config: LossSettings, model):
        super().__init__()
        self.config = config  # the whole `model.losses` section
        self.section = config.sections.get(self.name)  # its own settings, where it has any

    @classmethod
    def runs_on(cls, weights: dict[str, float], model) -> bool:
        """Whether it runs on a batch whose terms weigh WEIGHTS: by default, when any of its
        terms weighs more than 0."""
        return any(weights.get(term, 0.0) for term in cls.terms)

    def forward(self, batch: KindBatch) -> dict:
        """{"losses": {term: scalar tensor}, "figures": {name: scalar tensor}} of one batch."""
        raise NotImplementedError


class ObjectiveRegistry:
    def __init__(self):
        self._classes: dict[str, type[Objective]] = {}
        self._builtins = "absent"

    def _load_builtins(self) -> None:
        if self._builtins == "absent":
            self._builtins = "loading"
            for module in BUILTIN:
                importlib.import_module(f"training.objectives.{module}")
            self._builtins = "loaded"

    def register(self, cls: type[Objective]) -> type[Objective]:
        self._load_builtins()
        if cls.name in self._classes:
            raise ValueError(f"objective {cls.name!r} is registered twice")
        taken = {(kind, term): other.name for other in self._classes.values() for kind in other.kinds
                 for term in other.terms}
        for kind in cls.kinds:
            for term in cls.terms:
                if (kind, term) in taken:
                    raise ValueError(f"objective {cls.name}: the term {kind}/{term} is objective "
                                     f"{taken[kind, term]}'s")
        self._classes[cls.name] = cls
        return cls

    def classes(self) -> list[type[Objective]]:
        """The built-in objectives in BUILTIN's order (whichever module was imported first),
        then the others in the order they were registered."""
        self._load_builtins()

        def place(cls) -> int:
            module = cls.__module__.rsplit(".", 1)[-1]
            return BUILTIN.index(module) if cls.__module__.startswith("training.objectives.") else len(BUILTIN)

        return sorted(self._classes.values(), key=place)  # a stable sort keeps registration order


OBJECTIVES = ObjectiveRegistry()


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: adds the objective to the registry (after those registered before)."""
    return OBJECTIVES.register(cls)


def objective_classes() -> list[type[Objective]]:
    return OBJECTIVES.classes()


def terms_by_batch() -> dict[str, list[str]]:
    """Batch name -> its loss terms, in registry order."""
    out: dict[str, list[str]] = {}
    for cls in objective_classes():
        for kind in cls.kinds:
            out.setdefault(kind, []).extend(cls.terms)
    return out


def default_weights() -> dict[str, dict[str, float]]:
    """`model.losses.weights` when a config gives none: 1.0 per term, 0 for the optional ones."""
    optional = {(kind, term) for cls in objective_classes() for kind in cls.kinds for term in cls.optional}
    return {kind: {term: 0.0 if (kind, term) in optional else 1.0 for term in terms}
            for kind, terms in terms_by_batch().items()}
