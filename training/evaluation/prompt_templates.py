"""The prompt templates of zero-shot classification when none are given: X²-VLM-style prompts,
short and caption-like, as CLIP's ensembles begin. Apart from the classifier (which loads torch)
so that `x2vlm-zero-shot --help` can show them at once."""

DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}.")
