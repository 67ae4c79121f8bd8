"""Fine-tuning of a model folder with DeepSpeed ZeRO: the command line.

  deepspeed --num_gpus N training/finetune.py --task retrieval --config configs/finetune/retrieval_coco.yaml \\
      --model MODEL_FOLDER [--set key=value ...]
  x2vlm-finetune --task grounding --config configs/finetune/grounding_refcoco.yaml --model MODEL_FOLDER
                                                                          (one process)
  x2vlm-finetune --task captioning --config configs/finetune/captioning_demo.yaml --model runs/demo/export

The config is a run config (configs/finetune/*.yaml: the task's recipe) read by the one run
config mechanism; `--model FOLDER` fills in the model: its config, its weights
(model.init_from) and its tokenizer (data.text.tokenizer). The task (training/tasks/finetuning.py)
sets which loss terms are on and checks that the corpora and held-out sets fit it. The run is
the pre-training Trainer with the task's report (training/extensions/finetune_report.py): the
held-out figures before the first step and after the last, checkpoints and `--resume auto` as
in pre-training, and a model folder at OUTPUT/export when `run.export_on_finish` is set (the
presets set it). Exit codes are x2vlm-pretrain's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_pipeline.config import ConfigError
from data_pipeline.logging_setup import configure_logging
from training.tasks.finetuning import TASKS, ForwardingTask, TrainingTask
from training.folders.model_folder import CONFIG_FILE, TOKENIZER_DIR, WEIGHTS_FILE

PROG = "x2vlm-finetune"


def task_parser(required: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, add_help=False)
    parser.add_argument("--task", choices=sorted(TASKS), required=required,
                        help="what to fine-tune for (a task that only evaluates takes its own arguments after it)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    tasks = "; ".join(f"{name}: {task.summary}" for name, task in sorted(TASKS.items()))
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[task_parser(required=True)],
        description="Fine-tune a model folder for a task with DeepSpeed ZeRO, as pre-training runs: under the "
                    "`deepspeed` launcher for several ranks, or as a plain process for one. Prints the held-out "
                    f"figures before and after; the presets are configs/finetune/*.yaml. Tasks: {tasks}.",
        epilog="Exit codes as x2vlm-pretrain: 0 done; 85 checkpointed after a pre-emption signal (requeue); "
               "86 stopped at once; 3 too many non-finite losses; 4 checkpoint not written or none verifies; "
               "5 a corpus cannot go on; 87 a rank stopped answering (requeue); 2 configuration error (a bad --model folder, a config that does not fit "
               "the task), or another trainer holds the output folder.")
    parser.add_argument("--config", required=True, type=Path, help="the task's run config (configs/finetune/)")
    parser.add_argument("--model", required=True, type=Path,
                        help="the model folder to fine-tune (x2vlm-export, x2vlm-convert or a fine-tuning run's "
                             "OUTPUT/export): its config, weights and tokenizer")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-5 (repeatable)")
    parser.add_argument("--resume", default=None,
                        help="'auto' (the newest complete checkpoint whose checksums verify, the default), 'none', "
                             "or a checkpoint folder")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return parser.parse_args(argv)


def model_overrides(folder: Path, task: TrainingTask) -> list[str]:
    """The run config's model, weights and tokenizer from the model FOLDER, and the task's
    loss weights; the user's --set come after and win. Values are JSON, which YAML reads as
    the same strings and mappings whatever the path looks like."""
    problems = [name for name in (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_DIR) if not (folder / name).exists()]
    if not folder.is_dir() or problems:
        raise ConfigError(f"--model {folder}: not a model folder (missing {', '.join(problems) or 'the folder'}); "
                          f"write one with x2vlm-export or x2vlm-convert")
    folder = folder.resolve()
    return [f"model={json.dumps(str(folder / CONFIG_FILE))}",
            f"model.init_from={json.dumps(str(folder))}",
            f"data.text.tokenizer={json.dumps(str(folder / TOKENIZER_DIR))}",
            f"model.losses.weights={json.dumps(task.loss_weights())}",
            *(f"{key}={json.dumps(value)}" for key, value in task.settings)]


def import_recipe_plugins(argv: list[str]) -> None:
    """The plug-ins the recipe (`--config`) names, imported before the task is looked up: a task
    a plug-in registers is then one of the choices of --task."""
    from data_pipeline.config import read_yaml_file
    from training.engine.plugins import import_plugins

    finder = argparse.ArgumentParser(add_help=False)
    finder.add_argument("--config", type=Path)
    config = finder.parse_known_args(argv)[0].config
    if config is None or not config.is_file():
        return  # the full parse reports it
    raw = read_yaml_file(config, "--config")
    if isinstance(raw, dict) and raw.get("plugins"):
        import_plugins(raw["plugins"], config.parent, f"{config}: plugins")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        import_recipe_plugins(argv)
    except ConfigError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    known, rest = task_parser(required=False).parse_known_args(argv)
    if known.task is not None and isinstance(TASKS[known.task], ForwardingTask):
        return TASKS[known.task].run(rest)
    args = parse_args(argv)
    task = TASKS[args.task]
    configure_logging()
    from training.engine.trainer import Trainer
    from training.extensions import enabled_extensions
    from training.extensions.finetune_report import FinetuneReport
    from training.pretrain import train

    try:
        overrides = model_overrides(args.model, task) + list(args.overrides)
    except ConfigError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2

    def check(config) -> None:
        try:
            task.check(config)
        except ConfigError as error:
            raise ConfigError(f"{config.source}: {error}") from None

    return train(args.config, overrides, args.resume, prog=PROG, check=check,
                 make_trainer=lambda config, resume: Trainer(config, resume,
                                                            enabled_extensions(config) + [FinetuneReport(task)]))


if __name__ == "__main__":
    from training.runtime.process_exit import exit_process

    exit_process(main())
