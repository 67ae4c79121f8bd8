"""The synthetic demo corpus: coloured shapes with captions, boxes and moving-shape videos."""
from .generate import DemoCorpusSpec, generate

__all__ = ["DemoCorpusSpec", "generate"]
