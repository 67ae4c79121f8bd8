"""The fine-tuning tasks of `x2vlm-finetune --task NAME`: one registry, one entry per task.

A training task is the task module (task.py) with a preset: which data kinds it trains on,
which loss terms are on (the others weigh 0), and which held-out sets it needs; its held-out
figures, printed before and after, are each set's headline metrics as its data kind names them
(data_pipeline/kinds). Its recipe (learning rate, steps, batch, ITM re-ranking k, corpora,
eval splits) is a run config under configs/finetune/. A forwarding task hands its arguments to
another command (an evaluation-only task, such as zero-shot classification, whose
`main(argv)` reads them). A plug-in registers a task with `register(TrainingTask(...))`.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

from data_pipeline.config import ConfigError
from data_pipeline.kinds import data_kind
from data_pipeline.spec import parse_data_spec
from training.objectives import terms_by_batch


@dataclasses.dataclass(frozen=True)
class TrainingTask:
    name: str
    summary: str
    kinds: tuple[str, ...]  # the data kinds it trains and evaluates on
    terms: dict[str, tuple[str, ...]]  # batch name -> the terms that are on (weight 1); every other weighs 0
    # Its figures, where not its data kinds' headline metrics (data_pipeline/kinds).
    headline: tuple[str, ...] = ()
    # Run config values the task needs (`--set KEY=VALUE` before the user's), e.g. an evaluation switch.
    settings: tuple[tuple[str, object], ...] = ()

    def loss_weights(self) -> dict[str, dict[str, float]]:
        """model.losses.weights for this task: every term of every batch, 1.0 where on."""
        return {batch: {term: float(term in self.terms.get(batch, ())) for term in terms}
                for batch, terms in terms_by_batch().items()}

    def eval_sets(self, config) -> list[tuple[str, str]]:
        """(name, kind) of the run's held-out sets this task reports."""
        return [(name, kind) for name, kind, _ in config.eval.named_sets() if kind in self.kinds]

    def figures(self, metrics: dict, config) -> dict[str, float]:
        """The headline metrics of METRICS (an evaluation's flat `set/metric` dict)."""
        return {f"{name}/{metric}": metrics[f"{name}/{metric}"] for name, kind in self.eval_sets(config)
                for metric in self.headline or data_kind(kind).headline if f"{name}/{metric}" in metrics}

    def check(self, config) -> None:
        """The run config fits the task; a ConfigError names the key."""
        if not config.model.get("init_from"):
            raise ConfigError("model.init_from: not set; fine-tuning starts from a model folder (--model FOLDER)")
        data = parse_data_spec(config.data, root=config.reference_dirs.get("data"), where="data")
        allowed = " or ".join(self.kinds)
        for i, corpus in enumerate(data.corpora):
            if corpus.kind not in self.kinds:
                raise ConfigError(f"data.corpora[{i}].kind: {corpus.kind}: the {self.name} task trains on {allowed} "
                                  f"corpora only")
        if not self.eval_sets(config):
            raise ConfigError(f"eval.sets: no held-out {allowed} set; the {self.name} task reports its figures "
                              f"before and after fine-tuning on one")
        for key, value in self.settings:
            section, _, name = key.partition(".")
            if getattr(getattr(config, section), name) != value:
                raise ConfigError(f"{key}: the {self.name} task needs {value!r}")
        if not config.eval.every_steps:
            raise ConfigError("eval.every_steps: 0; fine-tuning evaluates at the end of the run (and every that "
                              "many steps): set it, for example to run.max_steps")


@dataclasses.dataclass(frozen=True)
class ForwardingTask:
    """A task done by another command: `x2vlm-finetune --task NAME ARGS...` runs its
    `main(ARGS)` (for example an evaluation-only task)."""
    name: str
    summary: str
    module: str  # the module whose main(argv) -> int runs the task

    def run(self, argv: list[str]) -> int:
        main: Callable[[list[str]], int] = importlib.import_module(self.module).main
        return main(argv)


TASKS: dict[str, TrainingTask | ForwardingTask] = {}


def register(task: TrainingTask | ForwardingTask) -> None:
    if task.name in TASKS:
        raise ValueError(f"fine-tuning task {task.name!r} is registered twice")
    TASKS[task.name] = task


# X²-VLM's retrieval fine-tuning: ITC plus ITM with hard negatives (no MLM); image-text and,
# with video corpora, video-text. R@1/5/10 both ways after ITM re-ranking of the top k.
register(TrainingTask(
    name="retrieval", summary="image-text (and video-text) retrieval: ITC + ITM with hard negatives",
    kinds=("image_text", "video_text"), terms={"image": ("itc", "itm"), "video": ("itc", "itm")}))
# X²-VLM's grounding fine-tuning (bbox): the box head alone, L1 + GIoU; accuracy at IoU 0.5.
register(TrainingTask(
    name="grounding", summary="visual grounding (RefCOCO, RefCOCO+, RefCOCOg): box head, L1 + GIoU",
    kinds=("region",), terms={"region": ("bbox", "giou")}))
# Captioning (X²-VLM's COCO captioning fine-tune, here with the causal decoder): the captioning
# loss alone on image-text corpora; the held-out images are captioned (eval.captioning) and
# scored with CIDEr-D and BLEU-4 beside the set's most frequent caption given to every image.
register(TrainingTask(
    name="captioning", summary="image captioning (COCO Karpathy): the causal decoder, CIDEr-D and BLEU-4",
    kinds=("image_text",), terms={"image": ("lm",)}, headline=("cider", "bleu4"),
    settings=(("eval.captioning", True),)))
# Zero-shot image classification: evaluation only, class names and prompt templates to text
# embeddings (training/evaluation/zero_shot_classification.py).
register(ForwardingTask(
    name="zero-shot", summary="zero-shot image classification (evaluation only): x2vlm-zero-shot",
    module="training.zero_shot"))
