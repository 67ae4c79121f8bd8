"""x2vlm-eval: evaluates a model on held-out shards and writes the metrics as JSON.

  x2vlm-eval MODEL_FOLDER --image-shards 'eval/image/*.tar' \
      --region-shards 'eval/region/*.tar' --video-shards 'eval/video/*.tar' --out metrics.json
  x2vlm-eval MODEL_FOLDER --image-shards 'eval/image/*.tar' --captioning   (also BLEU-4 and CIDEr-D)
  x2vlm-eval --model-config configs/model/tiny.yaml --tokenizer DIR ...   (random weights: a smoke test)

MODEL_FOLDER is a model folder (training/model_folder.py: x2vlm-export, x2vlm-convert or the
trainer's export write one); its tokenizer is used unless --tokenizer names another.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Only what --help needs is imported here; the rest (torch with it) once the arguments are read.
from data_pipeline.config import ConfigError
from data_pipeline.logging_setup import configure_logging
from training.runtime.command_line import DeviceError, add_device_options, at_least, output_file, resolve_device


class UsageError(ValueError):
    """A mistake in the command line; reported in one line with exit code 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="x2vlm-eval", description="Zero-shot image-text and video-text retrieval (ITC, then ITM re-ranking of "
                                       "the top k) and grounding accuracy of an X²-VLM model on eval shards.")
    parser.add_argument("model_dir", nargs="?", type=Path, metavar="MODEL_FOLDER",
                        help="a model folder (x2vlm-export, x2vlm-convert)")
    parser.add_argument("--model-config", help="a model config (YAML path or name in configs/model/) with random "
                                               "weights, instead of MODEL_FOLDER")
    parser.add_argument("--tokenizer", help="tokenizer directory (as the data spec's text.tokenizer); default: the "
                                            "model folder's")
    parser.add_argument("--image-shards", action="append", default=[], metavar="PATTERN",
                        help="image-text eval shards (brace / glob pattern; repeatable)")
    parser.add_argument("--region-shards", action="append", default=[], metavar="PATTERN",
                        help="region (grounding) eval shards")
    parser.add_argument("--video-shards", action="append", default=[], metavar="PATTERN", help="video-text eval shards")
    parser.add_argument("--image-res", type=at_least(1), default=None,
                        help="input resolution (default: the model's vision.image_size)")
    parser.add_argument("--max-tokens", type=at_least(3),
                        help="text length in tokens (default: the data config's, data.text.max_tokens)")
    parser.add_argument("--video-frames", type=at_least(1),
                        help="frames per video (default: the data config's, options.frames of a video corpus)")
    parser.add_argument("--itm-top-k", type=at_least(0), default=16, help="candidates re-ranked by ITM; 0: ITC only (16)")
    parser.add_argument("--batch-size", type=at_least(1), default=32, help="images or videos per encoding batch (32)")
    parser.add_argument("--max-samples", type=at_least(1), default=None, help="evaluate only the first N samples per kind")
    parser.add_argument("--captioning", action="store_true",
                        help="also caption the images of --image-shards with the causal decoder and score the "
                             "captions against their texts: BLEU-4 and CIDEr-D (for a model trained with "
                             "losses.weights.image.lm)")
    parser.add_argument("--caption-beam", type=at_least(1), default=1, help="beam width of --captioning; 1: greedy (1)")
    parser.add_argument("--caption-max-len", type=at_least(1), default=30, help="most tokens per caption (30)")
    parser.add_argument("--shard-timeout", type=float, metavar="SECONDS",
                        help="give up on a shard not read within this many seconds, counted as shard_timeout "
                             "(default: the loader's, loader.shard_read_timeout_s)")
    add_device_options(parser)
    parser.add_argument("--out", type=output_file, help="write the metrics to this JSON file")
    parser.add_argument("--grounding-png", type=Path, help="also draw the first 8 region queries with their boxes")
    return parser.parse_args(argv)


def load_model(model_dir: Path | None, model_config: str | None, tokenizer: str | None):
    """(the model, the tokenizer directory): a model folder's, or random weights of a config
    with the tokenizer given."""
    from training.folders.model_folder import ModelFolderError, load_model_folder
    from training.model import create_model

    if (model_dir is None) == (model_config is None):
        raise UsageError("give exactly one of MODEL_FOLDER (a model folder) or --model-config (random weights)")
    if model_config is not None:
        if tokenizer is None:
            raise UsageError("--model-config needs --tokenizer (a model folder brings its own)")
        return create_model(model_config, load_pretrained=False), tokenizer
    try:
        folder = load_model_folder(model_dir)
    except ModelFolderError as error:
        raise UsageError(str(error)) from None
    return folder.model, tokenizer or str(folder.tokenizer)


def patch_size_of(model) -> int:
    return model.config.vision.image_size // model.vision.grid_size


def format_table(metrics: dict[str, float]) -> str:
    """One line per kind: its metrics, recalls and accuracies as percentages."""
    kinds: dict[str, list[str]] = {}
    for key, value in metrics.items():
        kind, name = key.split("/", 1)
        shown = f"{value:d}" if isinstance(value, int) else f"{100 * value:.1f}"
        kinds.setdefault(kind, []).append(f"{name} {shown}")
    width = max(len(k) for k in kinds) if kinds else 0
    return "\n".join(f"{kind:<{width}}  " + "  ".join(values) for kind, values in kinds.items())


def run(args: argparse.Namespace) -> dict[str, float]:
    from training.evaluation.captioning import CaptioningSettings
    from training.evaluation.eval_sets import eval_data_spec
    from training.evaluation.evaluator import evaluate
    from data_pipeline.transforms import VideoTextOptions

    frames = args.video_frames or VideoTextOptions.frames  # the text length left None takes the spec's default
    if not (args.image_shards or args.region_shards or args.video_shards):
        raise UsageError("nothing to evaluate: give --image-shards, --region-shards and/or --video-shards")
    if args.tokenizer is not None and not Path(args.tokenizer).is_dir():
        raise UsageError(f"--tokenizer {args.tokenizer}: not a directory (a tokenizer saved with save_pretrained)")
    if args.grounding_png and not args.region_shards:
        raise UsageError("--grounding-png needs --region-shards")
    device = resolve_device(args.device, args.threads)
    model, tokenizer = load_model(args.model_dir, args.model_config, args.tokenizer)
    model = model.to(device)
    built_for = model.config.vision.image_size
    dynamic = model.config.vision.timm_kwargs.get("dynamic_img_size", False)
    if args.image_res is not None and args.image_res != built_for and not dynamic:
        raise UsageError(f"--image-res {args.image_res}: the model was built for {built_for} px inputs "
                         f"(vision.image_size; set vision.timm_kwargs.dynamic_img_size for other sizes)")
    if args.video_shards and frames > model.config.vision.max_frames:
        raise UsageError(f"--video-frames {frames}: the model takes at most {model.config.vision.max_frames} "
                         f"frames (vision.max_frames)")
    sets = [("image", "image_text", args.image_shards), ("region", "region", args.region_shards),
            ("video", "video_text", args.video_shards)]
    spec = eval_data_spec(
        tokenizer, args.image_res or model.config.vision.image_size, patch_size_of(model), sets,
        batch_size=args.batch_size, max_tokens=args.max_tokens, options={"video_text": {"frames": frames}},
        shard_read_timeout_s=args.shard_timeout)
    if args.captioning and not args.image_shards:
        raise UsageError("--captioning needs --image-shards")
    captioning = CaptioningSettings(args.caption_max_len, args.caption_beam) if args.captioning else None
    metrics = evaluate(model, spec, itm_top_k=args.itm_top_k, max_samples=args.max_samples, captioning=captioning)
    if args.grounding_png:
        from training.evaluation.plots import draw_grounding_examples

        draw_grounding_examples(model, spec, args.grounding_png, count=8)
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    from training.evaluation.eval_sets import EmptyEvalSet

    try:
        metrics = run(args)
    except (UsageError, ConfigError, FileNotFoundError, DeviceError, EmptyEvalSet) as error:
        # Mistakes in the command line, the model config or the shard names; any other error is a
        # failure to investigate, with its traceback.
        print(f"x2vlm-eval: {error}", file=sys.stderr)
        return 2
    print(format_table(metrics))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"metrics written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
