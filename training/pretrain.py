"""X²-VLM pre-training with DeepSpeed ZeRO: the command line.

  deepspeed --num_gpus N training/pretrain.py --config RUN.yaml [--set key=value ...]
  python -m training.pretrain --config RUN.yaml          (one process)

Reads the run config, builds the Trainer (training/engine/trainer.py) with the extensions the
config turns on (training/extensions) and turns its outcome into an exit code. Checkpoints are written every `checkpoint.every_steps` steps and when SIGUSR1 /
SIGTERM arrives; `--resume auto` (the default) continues from the newest checkpoint whose
checksums verify, exactly where the data stream, the random generators and the optimizer stood.
`--init-from PATH` starts from weights instead (training/init_from.py), at step 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

from data_pipeline.config import ConfigError
from data_pipeline.loader.corpus_loader import WorkerTimeout
from data_pipeline.loader.stream import CorpusUnusable
from data_pipeline.logging_setup import configure_logging
from training.engine.checkpoint import CheckpointError
from training.engine.run_config import RunConfig, check_resume, check_sections, load_run_config
from training.runtime.heartbeats import is_collective_failure, silent_ranks
from training.runtime.run_lock import LockHeld
from training.runtime.signals import IMMEDIATE_EXIT_CODE, REQUEUE_EXIT_CODE
from training.engine.trainer import NonFiniteLossError, Trainer
from training.extensions import enabled_extensions

NONFINITE_EXIT_CODE = 3
CHECKPOINT_EXIT_CODE = 4
DATA_EXIT_CODE = 5
COLLECTIVE_EXIT_CODE = 87


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="x2vlm-pretrain",
        description="X²-VLM pre-training with DeepSpeed ZeRO. Run under the `deepspeed` launcher for several "
                    "ranks, or as a plain process for one.",
        epilog=f"Exit codes: 0 done; {REQUEUE_EXIT_CODE} checkpointed after a pre-emption signal or the launcher's "
               f"end (requeue the job); {IMMEDIATE_EXIT_CODE} stopped at once (a second signal, or no checkpoint "
               f"within guard.launcher_grace_s of the launcher's end); "
               f"{NONFINITE_EXIT_CODE} too many non-finite losses in a row; {CHECKPOINT_EXIT_CODE} a checkpoint could "
               f"not be written, or none verifies for --resume; {DATA_EXIT_CODE} a corpus cannot go on (most of its "
               f"samples bad, no shard readable, a loader worker stuck); {COLLECTIVE_EXIT_CODE} a rank stopped "
               f"answering for guard.collective_timeout_s (no checkpoint: requeue, it resumes from the last one); "
               f"2 configuration error, or another trainer holds the output folder.",
    )
    parser.add_argument("--config", required=True, type=Path, help="run config YAML (see configs/runs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=3e-4 (repeatable)")
    parser.add_argument("--resume", default=None,
                        help="'auto' (the newest complete checkpoint whose checksums verify, the default), 'none', "
                             "or a checkpoint folder")
    parser.add_argument("--init-from", metavar="PATH",
                        help="start from these weights, with a fresh optimizer and schedule at step 0 (the same as "
                             "--set model.init_from=PATH): a model folder, a weights file, or an official X²-VLM / "
                             "X-VLM .th checkpoint; a checkpoint in the output folder (--resume auto) wins over it")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    overrides = list(args.overrides)
    if args.init_from is not None:
        # Quoted, so that the path is read as a string whatever it looks like.
        overrides.append(f"model.init_from={json.dumps(args.init_from)}")
    return train(args.config, overrides, args.resume)


def check_output_dir(path: Path, key: str) -> None:
    """The output folder exists or can be made, and takes a file: a read-only mount or a path
    through a file is refused before anything starts (not a traceback at the first write)."""
    import tempfile

    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ConfigError(f"{key}: {path}: cannot write there ({error.strerror or error})") from None


def build_trainer(config: RunConfig, resume: str | None) -> Trainer:
    """The trainer of a checked run config, with the extensions it turns on."""
    return Trainer(config, resume, enabled_extensions(config))


def train(config_path: Path, overrides: list[str], resume: str | None, prog: str = "x2vlm-pretrain",
          check: Callable[[RunConfig], None] | None = None,
          make_trainer: Callable[[RunConfig, str | None], Trainer] | None = None) -> int:
    """The run config read and checked (also by CHECK, for a command's own rules), the trainer
    built and run, its outcome turned into an exit code; x2vlm-finetune runs through here too."""
    trainer = None
    try:
        # Every configuration mistake that needs no process group is found here, on every rank
        # alike, before anything starts; the rest (a batch the world size cannot split, a
        # tokenizer larger than the vocabulary) while the trainer is built.
        config = load_run_config(config_path, overrides)
        if check is not None:
            check(config)
        check_sections(config)
        if resume is not None:
            check_resume(resume, "--resume")
        else:
            check_resume(config.checkpoint.resume, f"{config.source}: checkpoint.resume")
        check_output_dir(Path(config.run.output_dir), f"{config.source}: run.output_dir")
        trainer = (make_trainer or build_trainer)(config, resume)
        return trainer.run()
    except (ConfigError, LockHeld) as error:
        # Only the project's own configuration errors (and another trainer on the same output
        # folder): a ValueError from DeepSpeed, timm or the tokenizer is a failure to
        # investigate, with its traceback.
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return NONFINITE_EXIT_CODE
    except CheckpointError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return CHECKPOINT_EXIT_CODE
    except (CorpusUnusable, WorkerTimeout) as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return DATA_EXIT_CODE
    except RuntimeError as error:
        if not is_collective_failure(error):
            raise
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        print(f"{prog}: rank {rank}: a collective failed ({str(error).strip().splitlines()[-1][:200]}) after waiting up "
              f"to guard.collective_timeout_s={config.guard.collective_timeout_s:g} s; least recently heard from: "
              f"{silent_ranks(Path(config.run.output_dir), world, rank)}. No checkpoint can be written without every "
              f"rank: exit {COLLECTIVE_EXIT_CODE}; requeue the job, it resumes from the last checkpoint",
              file=sys.stderr, flush=True)
        return COLLECTIVE_EXIT_CODE
    finally:
        if trainer is not None:
            trainer.close()


if __name__ == "__main__":
    from training.runtime.process_exit import exit_process

    exit_process(main())
