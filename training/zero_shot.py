"""x2vlm-zero-shot: zero-shot image classification accuracy of a model folder
(training/evaluation/zero_shot.py).

  x2vlm-zero-shot MODEL_FOLDER --images DIR [--classes FILE] [--templates FILE] [--out JSON]
  x2vlm-zero-shot MODEL_FOLDER --shards 'imagenet-val-{0000..0063}.tar' --classes FILE [--label-field cls]

--images: an ImageFolder tree (DIR/CLASS/IMAGE; the classes are its folders unless --classes
says otherwise). --shards: shards with a label in a member (`cls`, as img2dataset and webdataset
write ImageNet) or a json field (--label-field). --classes: one class per line in label order,
NAME or KEY<TAB>NAME; --templates: one prompt per line with {} for the class name (default: a
few "a photo of a {}." prompts). Prints top-1 and top-5 accuracy; --out writes them, per class,
as JSON.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


# Only what --help needs is imported here; the rest (torch with it) once the arguments are read.
from data_pipeline.logging_setup import configure_logging
from training.evaluation.prompt_templates import DEFAULT_TEMPLATES
from training.inference.precisions import DTYPE_NAMES
from training.runtime.command_line import add_device_options, at_least, output_file

PROG = "x2vlm-zero-shot"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0].replace("\n", " "),
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1]
        + "\nExit codes: 0 done; 2 a model folder, classes or templates file, image folder, shard or label that "
          "cannot be used (named).")
    parser.add_argument("model", type=Path, metavar="MODEL_FOLDER", help="a model folder (x2vlm-export, x2vlm-convert)")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--images", type=Path, metavar="DIR", help="an ImageFolder tree: DIR/CLASS/IMAGE")
    data.add_argument("--shards", action="append", metavar="PATTERN",
                      help="shards with a label field (brace patterns, globs, folders, http(s)://, pipe:); repeatable")
    parser.add_argument("--classes", type=Path, metavar="FILE",
                        help="class names, one per line in label order, NAME or KEY<TAB>NAME (required with --shards; "
                             "with --images, default: the folder names, underscores as spaces)")
    parser.add_argument("--templates", type=Path, metavar="FILE",
                        help="prompt templates, one per line, {} for the class name (default: "
                             + "; ".join(DEFAULT_TEMPLATES).replace("%", "%%") + ")")
    parser.add_argument("--label-field", default="cls",
                        help="with --shards: the sample member holding the label, or else the field of its json "
                             "(dots for nested fields) (cls)")
    parser.add_argument("--batch-size", type=at_least(1), default=64, help="images per model call (64)")
    add_device_options(parser)
    parser.add_argument("--precision", choices=sorted(DTYPE_NAMES), help="bf16 on a GPU, fp32 on the CPU by default")
    parser.add_argument("--out", type=output_file, metavar="JSON", help="write the figures (and per-class top-1) here")
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="a progress bar (default: when stderr is a terminal)")
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    if args.shards and args.classes is None:
        parser.error("--shards needs --classes (the names the labels stand for)")
    return args


def run(args: argparse.Namespace) -> dict:
    from data_pipeline.io.shard_list import expand_shards
    from data_pipeline.skips import Counters
    from training.evaluation.zero_shot_classification import (check_templates, classify, image_folder,
                                                              labelled_shards, read_classes, read_templates,
                                                              write_result)
    from training.inference import X2VLMPredictor
    from training.runtime.command_line import resolve_device

    # Every input is checked before the model loads, so that a mistake fails at once.
    classes = read_classes(args.classes) if args.classes else None
    templates = read_templates(args.templates) if args.templates else check_templates(DEFAULT_TEMPLATES)
    counters = Counters()
    if args.images is not None:
        classes, listed = image_folder(args.images, classes)
        images, total, data = listed, len(listed), str(args.images)
    else:
        urls = expand_shards(args.shards, where="--shards")
        images, total, data = labelled_shards(urls, classes, args.label_field, counters), None, args.shards
    device = resolve_device(args.device, args.threads)
    predictor = X2VLMPredictor(args.model, device=device, batch_size=args.batch_size, precision=args.precision)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    result = classify(predictor, images, classes, templates, batch_size=args.batch_size, counters=counters,
                      progress=progress, total=total)
    print(result.summary())
    if args.out:
        write_result(result, args.out, model=str(args.model), data=data)
        print(f"written to {args.out}", file=sys.stderr)
    return result.as_dict()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    from data_pipeline.config import ConfigError
    from data_pipeline.io.shard_list import ShardListError
    from training.evaluation.zero_shot_classification import ZeroShotError
    from training.folders.model_folder import ModelFolderError
    from training.inference import InputError
    from training.runtime.command_line import DeviceError

    try:
        run(args)
    except (ZeroShotError, InputError, ModelFolderError, ConfigError, ShardListError, DeviceError) as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
