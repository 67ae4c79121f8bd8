"""Model folders (model_folder.py), starting a model from weights (init_from.py) and the
names of the official X²-VLM / X-VLM checkpoints (official_weights.py)."""
