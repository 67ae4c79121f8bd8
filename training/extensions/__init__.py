"""Optional training features as trainer extensions (the hooks: training/engine/extension.py),
and the registry that says which ones a run config turns on.

Each registered factory takes the run config and returns its extension, or None where the
config leaves the feature off; `enabled_extensions` returns a run's in registration order
(momentum distillation, grouping's feature records, the trained-keys log, then plug-ins').
Fine-tuning adds its report (finetune_report.py) itself. A plug-in adds a feature with

    register_extension("ema_export", lambda config: EmaExport() if config.run.name.endswith("ema") else None)
"""
from __future__ import annotations

from typing import Callable

from training.engine.extension import Extension

ExtensionFactory = Callable[[object], "Extension | None"]
_FACTORIES: dict[str, ExtensionFactory] = {}


def register_extension(name: str, factory: ExtensionFactory) -> None:
    if name in _FACTORIES:
        raise ValueError(f"training extension {name!r} is registered twice")
    _FACTORIES[name] = factory


def enabled_extensions(config) -> list[Extension]:
    """The extensions the run config CONFIG (training/engine/run_config.py) turns on."""
    return [extension for factory in _FACTORIES.values() if (extension := factory(config)) is not None]


def _momentum_distillation(config) -> Extension | None:
    from training.objectives.settings import parse_loss_settings

    settings = parse_loss_settings(config.model.get("losses"), "model.losses")
    if not settings.momentum_distillation.enabled:
        return None
    from training.extensions.momentum import MomentumDistillation

    return MomentumDistillation(settings.momentum_distillation, settings.same_text_positive)


def _grouping_features(config) -> Extension | None:
    grouping = config.data.get("grouping") or {}
    if not grouping.get("enabled", False):
        return None
    from training.extensions.grouping_features import GroupingFeatures

    return GroupingFeatures()


def _trained_keys(config) -> Extension | None:
    if not config.logging.trained_keys:
        return None
    from training.extensions.trained_keys import TrainedKeysLog

    return TrainedKeysLog()


register_extension("momentum_distillation", _momentum_distillation)
register_extension("grouping_features", _grouping_features)
register_extension("trained_keys", _trained_keys)
