"""The inference API: a model folder with its own preprocessing (predictor.py).

    from training.inference import X2VLMPredictor

The names are imported from predictor.py when first used, so that a command can read
training.inference.precisions (its --help) without loading torch."""
import importlib

__all__ = ["PRECISIONS", "Box", "InputError", "Ranked", "X2VLMPredictor", "image_bytes"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(f"{__name__}.predictor"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
