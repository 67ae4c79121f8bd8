"""`x2vlm-export CHECKPOINT --out DIR`: consolidated weights of a training checkpoint.

Writes DIR/model.safetensors (fp32, the optimizer's master weights gathered from every ZeRO
partition by DeepSpeed's zero-to-fp32 utilities, any stage) and DIR/model.yaml (the model
config), which `load_exported` (or `create_model` + `load_state_dict`) reads for fine-tuning.
The checkpoint is read only once every file's checksum verified, and weights-only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from data_pipeline.config import ConfigError, read_yaml_file
from data_pipeline.logging_setup import configure_logging
from training import safe_load
from training.checkpoint import RUN_CONFIG_FILE, CheckpointError, read_marker, verify_checkpoint
from training.model import X2VLM, create_model

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.yaml"


def consolidated_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with safe_load.weights_only_loading():
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
    return {name: tensor.detach().float().contiguous() for name, tensor in state.items()}


def export(checkpoint: Path, out: Path) -> Path:
    checkpoint = Path(checkpoint)
    if read_marker(checkpoint) is None:
        raise FileNotFoundError(f"{checkpoint} is not a complete checkpoint folder (no COMPLETE marker)")
    problems = verify_checkpoint(checkpoint)
    if problems:
        raise CheckpointError(f"{checkpoint} cannot be trusted: {'; '.join(problems)}")
    config_path = checkpoint / RUN_CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: the checkpoint does not say which model it holds")
    model_config = read_yaml_file(config_path, "run config")["model"]
    state = consolidated_state_dict(checkpoint)
    model = create_model(model_config, load_pretrained=False)
    names = [name for name, _ in model.named_parameters()]
    missing = sorted(set(names) - set(state))
    if missing:
        raise KeyError(f"{checkpoint}: the consolidated weights lack {missing[:5]}")
    return write_export({name: state[name] for name in names}, model_config, out, source=str(checkpoint))


def write_export(weights: dict[str, torch.Tensor], model_config: dict, out: Path, source: str) -> Path:
    """WEIGHTS holds each parameter once (named_parameters() drops the tied MLM decoder)."""
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / WEIGHTS_FILE), metadata={"source": source})
    (out / CONFIG_FILE).write_text(yaml.safe_dump(model_config, sort_keys=False), encoding="utf-8")
    return out


def load_exported(directory: Path) -> X2VLM:
    """The model of an exported directory, on the CPU in fp32."""
    directory = Path(directory)
    model = create_model(read_yaml_file(directory / CONFIG_FILE, "model config"), load_pretrained=False)
    result = model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=False)
    # Buffers are rebuilt by the model; the MLM decoder is tied to the word embeddings.
    rebuilt = {"mlm_head.decoder.weight"} | {name for name, _ in model.named_buffers()}
    missing = [k for k in result.missing_keys if k not in rebuilt]
    if missing or result.unexpected_keys:
        raise KeyError(f"{directory}: weights do not fit the model: missing {missing[:5]}, "
                       f"unexpected {result.unexpected_keys[:5]}")
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="x2vlm-export",
        description="Write the consolidated fp32 weights (safetensors) and model config of a training "
                    "checkpoint, from any ZeRO stage, for fine-tuning or evaluation.",
        epilog="Exit codes: 0 done; 2 not a complete checkpoint, or one whose files do not verify (named).")
    parser.add_argument("checkpoint", type=Path, help="a checkpoint folder, e.g. runs/demo/train/checkpoints/step_00000400")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        out = export(args.checkpoint, args.out)
    except (FileNotFoundError, KeyError, CheckpointError, ConfigError) as error:
        print(f"x2vlm-export: {error}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} -> {out / WEIGHTS_FILE}, {out / CONFIG_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
