"""The training engine: the trainer (trainer.py) and its extension points (extension.py),
checkpoints, the run config and its plug-ins, metrics, progress and the optimizer."""
