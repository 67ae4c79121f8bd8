"""Evaluation on held-out shards: zero-shot retrieval with ITM re-ranking, grounding accuracy,
each set scored by the evaluation its data kind names (``register_evaluation`` adds one).

The names below are imported from their modules when first used, so that a command can read a
constant of this package (its --help) without loading torch. The function retrieval_metrics is
imported from its module of the same name: once imported, that name here is the module."""
import importlib

_EXPORTS = {"evaluate": "evaluator", "predict_boxes": "evaluator", "register_evaluation": "evaluator",
            "box_iou": "grounding", "centre_boxes": "grounding", "grounding_accuracy": "grounding",
            "grounding_metrics": "grounding", "positive_ranks": "retrieval_metrics", "recalls": "retrieval_metrics"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
