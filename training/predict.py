"""x2vlm-predict: a model folder on one's own images (training/inference.py).

  x2vlm-predict rank MODEL_FOLDER IMAGE_DIR "a red circle" [--top-k 10] [--itm-top-k 16]
  x2vlm-predict score MODEL_FOLDER pairs.tsv              (image<TAB>text per line; or .jsonl)
  x2vlm-predict ground MODEL_FOLDER image.jpg "the red circle" [--out box.png]
  x2vlm-predict caption MODEL_FOLDER IMAGE... [--beam 3] [--max-len 30] [--out captions.json]

rank: the images of a folder (and its subfolders) against a text, best first: ITC similarity,
then the first --itm-top-k re-ranked by ITM probability, as x2vlm-eval ranks; an image that
cannot be read is skipped, counted and named on stderr (--strict stops instead). score: the ITM
probability of each image-text pair of a file; relative image paths are taken from the file's
folder. ground: the box of a phrase in an image, printed as x y w h in the image's pixels and
drawn into a PNG. caption: a caption of each image (or of each image of a folder) from the
causal decoder, for a model trained with the captioning loss: IMAGE<TAB>caption per line, or a
JSON list of {"image", "caption"} with --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_pipeline.schema import IMAGE_EXTENSIONS
from training.runtime.command_line import DeviceError, add_device_options, at_least, output_file, resolve_device

# torch, Pillow and the model load inside the functions that need them: `--help` and a wrong
# argument answer at once.


class UsageError(ValueError):
    """A mistake in the command line or its input files; one line, exit code 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="x2vlm-predict", description=__doc__.splitlines()[0],
                                     epilog="Exit codes: 0 done; 2 a model folder, image, text or file that cannot be "
                                            "used (named).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{rank,score,ground,caption}")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("model", type=Path, metavar="MODEL_FOLDER", help="a model folder (x2vlm-export, x2vlm-convert)")
        return sub

    rank = command("rank", "rank the images of a folder against a text query")
    rank.add_argument("images", type=Path, metavar="IMAGE_DIR",
                      help=f"folder of images ({', '.join(IMAGE_EXTENSIONS)}; subfolders too)")
    rank.add_argument("query", help="the text to match")
    rank.add_argument("--top-k", type=at_least(1), default=10, help="images to print (10)")
    rank.add_argument("--itm-top-k", type=at_least(0), default=16, help="ITC candidates re-ranked by ITM; 0: ITC only (16)")
    rank.add_argument("--strict", action="store_true",
                      help="stop at the first image that cannot be read (default: skip it, count it and name it on "
                           "stderr)")

    score = command("score", "ITM probability of each image-text pair of a file")
    score.add_argument("pairs", type=Path, metavar="PAIRS_FILE",
                       help="a .jsonl file of {\"image\": PATH, \"text\": TEXT} lines, or else lines of PATH<TAB>TEXT "
                            "(blank lines and lines starting with # are skipped); relative paths are taken from the "
                            "file's folder")
    score.add_argument("--out", type=output_file, help="write the scores to this TSV file instead of printing them")

    ground = command("ground", "the box of a phrase in an image, printed and drawn into a PNG")
    ground.add_argument("image", type=Path, help="an image file")
    ground.add_argument("text", help="the phrase to ground")
    ground.add_argument("--out", type=output_file, help="the PNG with the box drawn (default: IMAGE_STEM.ground.png here)")

    caption = command("caption", "a caption of each image, from the causal decoder")
    caption.add_argument("images", type=Path, nargs="+", metavar="IMAGE",
                         help="image files, or folders of images (subfolders too)")
    caption.add_argument("--beam", type=at_least(1), default=1, help="beam width; 1: greedy (1)")
    caption.add_argument("--max-len", type=at_least(1), default=30, help="most tokens per caption (30)")
    caption.add_argument("--prompt", default="", help="text every caption starts with, left out of the output "
                                                      "(e.g. 'a picture of'; default none)")
    caption.add_argument("--out", type=output_file, help="write the captions to this JSON file instead of printing them")
    caption.add_argument("--force", action="store_true",
                         help="caption even with a model whose card says its training never ran the captioning loss "
                              "(its captions are then not words)")

    for sub in (rank, score, ground, caption):
        add_device_options(sub)
        sub.add_argument("--batch-size", type=at_least(1), default=32, help="images per model call (32)")
    return parser.parse_args(argv)


def image_files(folder: Path) -> list[Path]:
    """The image files under FOLDER in name order; links that lead out of it are left out."""
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a directory")
    root = folder.resolve()
    suffixes = {f".{ext}" for ext in IMAGE_EXTENSIONS}
    files = [p for p in sorted(folder.rglob("*"))
             if p.suffix.lower() in suffixes and p.is_file() and p.resolve().is_relative_to(root)]
    if not files:
        raise UsageError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def caption_inputs(paths: list[Path]) -> list[Path]:
    """The image files named, folders expanded (image_files) in the order given."""
    files = []
    for path in paths:
        if path.is_dir():
            files += image_files(path)
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"{path}: not a file or directory")
    return files


def read_pairs(path: Path) -> list[tuple[Path, str]]:
    """(image, text) pairs of a JSONL or TSV file; a malformed line is an error naming it."""
    if not path.is_file():
        raise UsageError(f"{path}: not a file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise UsageError(f"{path}: not UTF-8 text ({error.reason})") from None
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        if path.suffix == ".jsonl":
            try:
                entry = json.loads(line)
            except ValueError as error:
                raise UsageError(f"{where}: not valid JSON ({error})") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not isinstance(entry.get("text"), str):
                raise UsageError(f"{where}: expected an object with \"image\" and \"text\" strings")
            image, text = entry["image"], entry["text"]
        else:
            if line.count("\t") != 1:
                raise UsageError(f"{where}: expected IMAGE<TAB>TEXT, found {line.count(chr(9))} tabs")
            image, text = line.split("\t")
        pairs.append((path.parent / image, text))  # an absolute IMAGE stays as it is
    if not pairs:
        raise UsageError(f"{path}: no pairs")
    return pairs


def draw_box(image: Path, box, text: str, out: Path) -> Path:
    """IMAGE as it is, with BOX (a training.inference.Box) outlined and TEXT written at the top."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    from training.evaluation.plots import LINE_WIDTH, PREDICTED_COLOUR
    from training.inference import image_bytes

    picture = Image.open(io.BytesIO(image_bytes(image))).convert("RGB")
    draw = ImageDraw.Draw(picture)
    width = max(LINE_WIDTH, round(min(picture.size) / 150))
    corners = [round(v) for v in (box.x, box.y, box.x + box.w, box.y + box.h)]
    draw.rectangle(corners, outline=PREDICTED_COLOUR, width=width)
    font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((2, 2), text, font=font)
    draw.rectangle((0, 0, right + 2, bottom + 2), fill=(255, 255, 255))
    draw.text((2, 2), text, fill=(0, 0, 0), font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out, format="PNG")
    return out


def run(args: argparse.Namespace) -> None:
    if args.command == "rank":
        files = image_files(args.images)  # before the model loads: a wrong folder fails at once
    elif args.command == "score":
        pairs = read_pairs(args.pairs)
    elif args.command == "caption":
        files = caption_inputs(args.images)
    device = resolve_device(args.device, args.threads)
    from training.inference import X2VLMPredictor

    predictor = X2VLMPredictor(args.model, device=device, batch_size=args.batch_size)
    if args.command == "rank":
        skipped = None if args.strict else []
        ranked = predictor.rank(files, args.query, top_k=args.top_k, itm_top_k=args.itm_top_k, skipped=skipped)
        if skipped:
            print(f"skipped {len(skipped)} of {len(files)} images that cannot be read (--strict stops instead):",
                  file=sys.stderr)
            for _, why in skipped:
                print(f"  {why}", file=sys.stderr)
            if len(skipped) == len(files):
                raise UsageError(f"{args.images}: none of its {len(files)} images can be read")
        print("rank\titm\titc\timage")
        for place, entry in enumerate(ranked, start=1):
            itm = f"{entry.itm:.4f}" if entry.itm is not None else "-"
            print(f"{place}\t{itm}\t{entry.itc:.4f}\t{files[entry.index]}")
    elif args.command == "score":
        scores = predictor.score([image for image, _ in pairs], [text for _, text in pairs]).tolist()
        rows = ["image\ttext\titm"] + [f"{image}\t{text}\t{score:.6f}" for (image, text), score in zip(pairs, scores)]
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text("\n".join(rows) + "\n", encoding="utf-8")
            print(f"{len(scores)} scores written to {args.out}")
        else:
            print("\n".join(rows))
    elif args.command == "caption":
        from training.folders.card_contents import captioning_trained

        if captioning_trained(predictor.card) is False and not args.force:
            raise UsageError(f"{args.model}: its card says its training never ran the captioning loss "
                             f"(losses.weights.image.lm is 0 in its run config), so its decoder writes no words; "
                             f"train it with that loss (README: Captioning), or give --force")
        captions = predictor.caption(files, max_len=args.max_len, beam=args.beam, prompt=args.prompt)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            entries = [{"image": str(f), "caption": c} for f, c in zip(files, captions)]
            args.out.write_text(json.dumps(entries, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            print(f"{len(captions)} captions written to {args.out}")
        else:
            print("\n".join(f"{f}\t{c}" for f, c in zip(files, captions)))
    else:
        box = predictor.ground(args.image, args.text)
        out = draw_box(args.image, box, args.text, args.out or Path(f"{args.image.stem}.ground.png"))
        print(f"{box.x:.1f} {box.y:.1f} {box.w:.1f} {box.h:.1f}")
        print(f"drawn into {out}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from data_pipeline.config import ConfigError
    from data_pipeline.logging_setup import configure_logging
    from training.folders.model_folder import ModelFolderError
    from training.inference import InputError

    configure_logging()
    try:
        run(args)
    except (UsageError, InputError, ModelFolderError, ConfigError, DeviceError) as error:
        print(f"x2vlm-predict: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
