"""`x2vlm-shards show`: a grid of samples with their boxes and captions drawn on them."""
from __future__ import annotations

import argparse
import io
import sys
import textwrap
from pathlib import Path

import av
from PIL import Image, ImageDraw, ImageFont

from ..io.shard_list import ShardListError, expand_shards
from ..io.shard_reader import ShardDamaged, checked_samples
from ..schema import media_extension, parse_meta

BOX_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
               (240, 50, 230), (128, 128, 0))
TEXT_LINES = 4
LINE_HEIGHT = 12
BACKGROUND = (255, 255, 255)


def add_subcommand(subparsers) -> None:
    parser = subparsers.add_parser(
        "show", help="draw samples with their boxes and captions into a PNG grid",
        description="Draw the first samples of SPEC (a directory, brace pattern, glob or URL; this project's shards "
                    "or img2dataset / video2dataset ones) into one PNG: each image (a video's first frame) scaled "
                    "into a square tile, every region's box (where the sample has regions) drawn in its own colour "
                    "with its caption or label at its corner, and the sample's key and first caption under the tile.")
    parser.add_argument("spec", metavar="SPEC", help="shards: directory, brace pattern, glob or URL")
    parser.add_argument("--out", type=Path, required=True, metavar="PNG", help="output image")
    parser.add_argument("--samples", type=int, default=12, metavar="N", help="samples to draw (default 12)")
    parser.add_argument("--columns", type=int, default=4, metavar="N", help="tiles per row (default 4)")
    parser.add_argument("--tile", type=int, default=256, metavar="PX", help="tile side in pixels (default 256)")
    parser.set_defaults(run=run)


def first_frame(data: bytes) -> Image.Image:
    with av.open(io.BytesIO(data)) as container:
        return next(container.decode(video=0)).to_image()


def tile_scale(width: int, height: int, tile: int) -> float:
    """Scale that fits the stored image into the tile."""
    return tile / max(width, height)


def draw_tile(sample: dict, tile: int) -> Image.Image:
    """The sample's picture with its regions (if any) and caption; raises on a sample it cannot draw."""
    meta = parse_meta(sample)
    extension = media_extension(sample)
    if extension is None:
        raise ValueError("no media member")
    data = sample[extension]
    picture = first_frame(data) if extension == "mp4" else Image.open(io.BytesIO(data)).convert("RGB")
    scale = tile_scale(picture.width, picture.height, tile)
    picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))))
    canvas = Image.new("RGB", (tile, tile + TEXT_LINES * LINE_HEIGHT), BACKGROUND)
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for index, region in enumerate(meta.regions):
        colour = BOX_COLOURS[index % len(BOX_COLOURS)]
        x, y, w, h = (v * scale for v in region.box)
        draw.rectangle([x, y, x + max(w - 1, 0), y + max(h - 1, 0)], outline=colour, width=2)
        draw.text((x + 3, y + 2), region.texts[0][:40], fill=colour, font=font)
    lines = textwrap.wrap(f"{meta.key}: {(meta.captions or [''])[0]}", width=max(10, tile // 6))[:TEXT_LINES]
    for number, line in enumerate(lines):
        draw.text((2, tile + number * LINE_HEIGHT), line, fill=(0, 0, 0), font=font)
    return canvas


def run(args: argparse.Namespace) -> int:
    if args.samples < 1 or args.columns < 1 or args.tile < 16:
        print("x2vlm-shards show: error: --samples and --columns must be at least 1, --tile at least 16", file=sys.stderr)
        return 2
    try:
        urls = expand_shards([args.spec], where="SPEC")
    except ShardListError as error:
        print(f"x2vlm-shards show: error: {error}", file=sys.stderr)
        return 2
    tiles = []
    for url in urls:
        try:
            for sample in checked_samples(url):
                try:
                    tiles.append(draw_tile(sample, args.tile))
                except Exception as error:  # noqa: BLE001 - any undrawable sample is reported, not a traceback
                    print(f"x2vlm-shards show: error: {url}: cannot draw sample {sample['__key__']} "
                          f"({type(error).__name__}: {error})", file=sys.stderr)
                    return 1
                if len(tiles) == args.samples:
                    break
        except ShardDamaged as error:
            print(f"x2vlm-shards show: error: {url} is not a readable shard ({error}); run x2vlm-shards verify",
                  file=sys.stderr)
            return 1
        if len(tiles) == args.samples:
            break
    if not tiles:
        print(f"x2vlm-shards show: error: the shards of {args.spec} hold no sample", file=sys.stderr)
        return 1
    columns = min(args.columns, len(tiles))
    rows = -(-len(tiles) // columns)
    width, height = tiles[0].size
    grid = Image.new("RGB", (columns * width, rows * height), BACKGROUND)
    for index, tile in enumerate(tiles):
        grid.paste(tile, ((index % columns) * width, (index // columns) * height))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out, format="PNG")
    print(f"{len(tiles)} samples drawn into {args.out}")
    return 0
