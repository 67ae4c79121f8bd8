"""`x2vlm-export CHECKPOINT --out DIR`: the model folder of a training checkpoint.

Writes DIR as training/folders/model_folder.py lays it out: model.safetensors (fp32, the optimizer's
master weights gathered from every ZeRO partition by DeepSpeed's zero-to-fp32 utilities, any
stage), model.yaml, the run's tokenizer (data.text.tokenizer of the checkpoint's run config,
or --tokenizer) and a card (the checkpoint, its step, the corpora, the held-out metrics the
run logged at that step). The checkpoint is read only once every file's checksum verified,
and weights-only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from data_pipeline.config import ConfigError, read_yaml_file
from data_pipeline.logging_setup import configure_logging
from training.runtime import safe_load
from training.engine.checkpoint import RUN_CONFIG_FILE, CheckpointError, read_marker, verify_checkpoint
from training.model.model_config import model_config_from_dict
from training.folders.model_folder import ModelCard, ModelFolderError, data_summary, parameter_shapes, write_model_folder


def consolidated_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with safe_load.weights_only_loading():
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
    return {name: tensor.detach().float().contiguous() for name, tensor in state.items()}


def run_summary(data: dict) -> dict | None:
    """The card's data entry from a run config's data section (None where it does not parse)."""
    from data_pipeline.spec import parse_data_spec

    try:
        return data_summary(parse_data_spec(data))
    except ConfigError:
        return None


def run_training(config_path: Path, run_config: dict, world_size: int, steps: int) -> dict | None:
    """The card's training entry from a checkpoint's run config (None where it does not parse)."""
    from data_pipeline.spec import parse_data_spec
    from training.engine.run_config import load_run_config
    from training.engine.trainer import apply_global_batch, global_batch
    from training.folders.card_contents import training_summary

    try:
        config = load_run_config(config_path)
        spec = parse_data_spec(config.data)
        apply_global_batch(spec, config, world_size)
    except ConfigError:
        return None
    grad_accum = config.optim.grad_accum
    return training_summary(run_config, global_batch(spec, world_size, grad_accum), world_size, grad_accum, steps)


def logged_metrics(run_dir: Path, step: int) -> dict | None:
    """The held-out metrics the run logged at STEP (its metrics.jsonl), if it evaluated then."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    found = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("kind") == "eval" and row.get("step") == step:
            found = {k: v for k, v in row.items() if k not in ("kind", "time", "step")}
    return found


def export(checkpoint: Path, out: Path, tokenizer: Path | None = None) -> Path:
    checkpoint = Path(checkpoint)
    marker = read_marker(checkpoint)
    if marker is None:
        raise FileNotFoundError(f"{checkpoint} is not a complete checkpoint folder (no COMPLETE marker)")
    problems = verify_checkpoint(checkpoint)
    if problems:
        raise CheckpointError(f"{checkpoint} cannot be trusted: {'; '.join(problems)}")
    config_path = checkpoint / RUN_CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: the checkpoint does not say which model it holds")
    run_config = read_yaml_file(config_path, "run config")
    if tokenizer is None:
        named = (run_config.get("data") or {}).get("text", {}).get("tokenizer")
        if not named or not Path(named).is_dir():
            raise FileNotFoundError(f"{config_path}: the run's tokenizer {named} is not a directory here; give the "
                                    f"tokenizer folder with --tokenizer DIR")
        tokenizer = Path(named)
    state = consolidated_state_dict(checkpoint)
    card = ModelCard(source={"kind": "checkpoint", "checkpoint": checkpoint.resolve().name,
                             "run": (run_config.get("run") or {}).get("name")}, steps=marker.step,
                     data=run_summary(run_config["data"]),
                     metrics=logged_metrics(checkpoint.resolve().parent.parent, marker.step),
                     training=run_training(config_path, run_config, marker.world_size, marker.step))
    # The consolidated state also holds the buffers and the training aids (objectives' own
    # parameters, the momentum copy); the model folder takes the model's parameters, which the
    # task names `model.*` (a version-0.1.0 checkpoint: without the prefix).
    names = parameter_shapes(model_config_from_dict(run_config["model"], "model"))
    weights = {name: state.get(f"model.{name}", state.get(name)) for name in names}
    missing = sorted(name for name, tensor in weights.items() if tensor is None)
    if missing:
        raise KeyError(f"{checkpoint}: the consolidated weights lack {missing[:5]}")
    return write_model_folder(out, weights, run_config["model"], tokenizer, card)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="x2vlm-export",
        description="Write the model folder (fp32 weights as safetensors, model config, tokenizer, model card) of a "
                    "training checkpoint, from any ZeRO stage, for evaluation, inference, fine-tuning or --init-from.",
        epilog="Exit codes: 0 done; 2 not a complete checkpoint, one whose files do not verify, or a tokenizer or "
               "output folder that cannot be used (named).")
    parser.add_argument("checkpoint", type=Path, help="a checkpoint folder, e.g. runs/demo/train/checkpoints/step_00000400")
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="the tokenizer folder to copy (default: the run config's data.text.tokenizer)")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        out = export(args.checkpoint, args.out, args.tokenizer)
    except (FileNotFoundError, KeyError, CheckpointError, ConfigError, ModelFolderError) as error:
        print(f"x2vlm-export: {error.args[0] if isinstance(error, KeyError) else error}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} -> the model folder {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
