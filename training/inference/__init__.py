"""The inference API: a model folder with its own preprocessing (predictor.py).

    from training.inference import X2VLMPredictor
"""
from training.inference.predictor import PRECISIONS, Box, InputError, Ranked, X2VLMPredictor, image_bytes

__all__ = ["PRECISIONS", "Box", "InputError", "Ranked", "X2VLMPredictor", "image_bytes"]
