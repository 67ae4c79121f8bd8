"""The fine-tuning tasks of `x2vlm-finetune --task NAME`: one registry, one entry per task.

A training task is a preset of the one trainer: which corpus kinds it trains on, which loss
terms are on (the others weigh 0), which held-out sets it needs and which of their metrics
it reports before and after. Its recipe (learning rate, steps, batch, ITM re-ranking k,
corpora, eval splits) is a run config under configs/finetune/. A forwarding task hands its
arguments to another command (an evaluation-only task, such as zero-shot classification,
whose `main(argv)` reads them).
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

from data_pipeline.config import ConfigError
from data_pipeline.spec import parse_data_spec
from training.model.model_config import LOSS_KINDS, LOSS_TERMS
from training.run_config import RunConfig

# The names eval.image_shards / region_shards / video_shards give their sets' metrics.
PLAIN_EVAL_SETS = (("image_shards", "image_text", "image"), ("region_shards", "region", "region"),
                   ("video_shards", "video_text", "video"))


@dataclasses.dataclass(frozen=True)
class TrainingTask:
    name: str
    summary: str
    kinds: tuple[str, ...]  # the data kinds it trains and evaluates on
    terms: dict[str, tuple[str, ...]]  # loss kind -> the terms that are on (weight 1); every other weighs 0
    headline: dict[str, tuple[str, ...]]  # data kind -> the metrics of its held-out sets printed before -> after

    def loss_weights(self) -> dict[str, dict[str, float]]:
        """model.losses.weights for this task: every term of every kind, 1.0 where on."""
        return {kind: {term: float(term in self.terms.get(kind, ())) for term in LOSS_TERMS[kind]}
                for kind in LOSS_KINDS}

    def eval_sets(self, config: RunConfig) -> list[tuple[str, str]]:
        """(name, kind) of the run's held-out sets this task reports."""
        section = config.eval
        plain = [(name, kind) for field, kind, name in PLAIN_EVAL_SETS if getattr(section, field)]
        return [(name, kind) for name, kind in plain + [(s.name, s.kind) for s in section.sets]
                if kind in self.kinds]

    def figures(self, metrics: dict, config: RunConfig) -> dict[str, float]:
        """The headline metrics of METRICS (an evaluation's flat `set/metric` dict)."""
        return {f"{name}/{metric}": metrics[f"{name}/{metric}"] for name, kind in self.eval_sets(config)
                for metric in self.headline[kind] if f"{name}/{metric}" in metrics}

    def check(self, config: RunConfig) -> None:
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
    kinds=("image_text", "video_text"), terms={"image": ("itc", "itm"), "video": ("itc", "itm")},
    headline={"image_text": ("img_r1", "txt_r1", "r_mean"), "video_text": ("img_r1", "txt_r1", "r_mean")}))
# X²-VLM's grounding fine-tuning (bbox): the box head alone, L1 + GIoU; accuracy at IoU 0.5.
register(TrainingTask(
    name="grounding", summary="visual grounding (RefCOCO, RefCOCO+, RefCOCOg): box head, L1 + GIoU",
    kinds=("region",), terms={"region": ("bbox", "giou")}, headline={"region": ("grounding_acc",)}))
# Zero-shot image classification: evaluation only, class names and prompt templates to text
# embeddings (training/evaluation/zero_shot.py).
register(ForwardingTask(
    name="zero-shot", summary="zero-shot image classification (evaluation only): x2vlm-zero-shot",
    module="training.evaluation.zero_shot_cli"))
