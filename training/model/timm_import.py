"""timm, imported without the Weights & Biases package it picks up on its own.

timm imports `wandb` whenever it is installed (timm/utils/summary.py, for its own training
scripts): half a second and a few hundred modules in every process that builds a model, loader
workers included. The project imports wandb only in a run that reports to it
(training/engine/wandb_reporter.py), so timm is imported here first with the name blocked; timm
catches the ImportError, and the block is lifted at once, so that a later `import wandb` works."""
from __future__ import annotations

import sys


def import_timm_without_wandb() -> None:
    if "timm" in sys.modules or "wandb" in sys.modules:
        return
    sys.modules["wandb"] = None  # `import wandb` raises ImportError while this stands
    try:
        import timm  # noqa: F401
        import timm.utils  # noqa: F401  (the module that tries wandb)
    finally:
        if sys.modules.get("wandb", 0) is None:
            del sys.modules["wandb"]
