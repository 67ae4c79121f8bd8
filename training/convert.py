"""``x2vlm-convert``: an official X²-VLM / X-VLM checkpoint (``.th``) into a model folder.

The checkpoint's names are mapped to this model's (training/folders/official_weights.py says
how); the result is a model folder (weights, model config, the ``--tokenizer`` copied, a card
naming the source file and its sha256), which ``x2vlm-eval``, ``x2vlm-predict`` and
``--init-from`` read. ``--init-from OFFICIAL.th`` applies the same mapping on the fly
(training/folders/init_from.py).
"""
from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

from data_pipeline.config import ConfigError
from data_pipeline.io.digest import file_sha256
from data_pipeline.logging_setup import configure_logging
from training.folders.official_weights import convert_state_dict
from training.model.checkpoint_files import read_state_dict


def main(argv: list[str] | None = None) -> int:
    from training.model import create_model
    from training.folders.model_folder import ModelCard, ModelFolderError, write_model_folder

    parser = argparse.ArgumentParser(
        prog="x2vlm-convert", description=__doc__.splitlines()[0] + " Writes a model folder (training/folders/model_folder.py).",
        epilog="Exit codes: 0 written; 1 conversion incomplete (shape mismatches, or --strict and a key unmatched "
               "or missing); 2 a file or config that cannot be read (named).")
    parser.add_argument("checkpoint", type=Path, help="official X²-VLM / X-VLM checkpoint (.th state dict)")
    parser.add_argument("--model-config", required=True, help="configs/model YAML path or name (x2vlm_base)")
    parser.add_argument("--tokenizer", type=Path, required=True,
                        help="the tokenizer folder the checkpoint was trained with (bert-base-uncased for X²-VLM "
                             "base, saved with save_pretrained); copied into the model folder")
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write")
    parser.add_argument("--strict", action="store_true",
                        help="fail when any key is unmatched or missing (the video parameters an image-only "
                             "checkpoint never had excepted)")
    args = parser.parse_args(argv)
    configure_logging()

    try:
        model = create_model(args.model_config, load_pretrained=False)
    except (ConfigError, FileNotFoundError) as error:
        print(f"x2vlm-convert: --model-config {args.model_config}: {error}", file=sys.stderr)
        return 2
    try:
        official = read_state_dict(args.checkpoint)
    except (OSError, pickle.UnpicklingError, RuntimeError) as error:
        # RuntimeError: torch's word for a file that is no torch checkpoint at all.
        print(f"x2vlm-convert: {args.checkpoint}: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    converted, report = convert_state_dict(official, model)
    model.load_state_dict(converted, strict=False)
    print("\n".join(report.lines()))
    if report.shape_mismatches or (args.strict and (report.unmatched_official or report.missing_in_checkpoint)):
        print("x2vlm-convert: conversion incomplete, nothing written", file=sys.stderr)
        return 1
    source = {"kind": "official checkpoint", "file": args.checkpoint.resolve().name,
              "sha256": file_sha256(args.checkpoint), "missing_in_checkpoint": report.missing_in_checkpoint,
              "not_in_source": report.not_in_source}
    try:
        write_model_folder(args.out, dict(model.named_parameters()), model.config, args.tokenizer,
                           ModelCard(source=source))
    except ModelFolderError as error:
        print(f"x2vlm-convert: {error}", file=sys.stderr)
        return 2
    print(f"wrote the model folder {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
