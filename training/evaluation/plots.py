"""A picture of grounding on eval images: each image with the true box (cyan) and the
predicted box (magenta, drawn last, so it covers the true box where they coincide), and the query
text underneath, in a grid with a legend line at the bottom."""
from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from training.evaluation.grounding import cxcywh_to_xyxy

# Colours no demo shape has (red, green, blue, yellow, purple, orange), so boxes stand out.
TRUE_COLOUR = (0, 220, 255)  # cyan
PREDICTED_COLOUR = (255, 0, 200)  # magenta
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)
LINE_WIDTH = 2
CAPTION_LINES = 3
LINE_HEIGHT = 12
LEGEND = "cyan: true box    magenta: predicted box"


def box_pixels(box: torch.Tensor, size: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) pixels of a normalised (cx, cy, w, h) box on a size x size tile."""
    x0, y0, x1, y1 = (cxcywh_to_xyxy(box.float()).clamp(0, 1) * (size - 1)).round().int().tolist()
    return x0, y0, x1, y1


def grounding_grid_size(count: int, columns: int, tile: int) -> tuple[int, int]:
    rows = -(-count // columns)
    caption = CAPTION_LINES * LINE_HEIGHT + 4
    return min(count, columns) * tile, rows * (tile + caption) + LINE_HEIGHT + 4


def draw_grounding(images: torch.Tensor, predicted: torch.Tensor, true: torch.Tensor, texts: list[str],
                   path: str | Path, columns: int = 4, tile: int = 192) -> Path:
    """Writes a PNG grid, one tile per query. ``images`` are uint8 (N, 3, H, W) as eval
    batches carry them; boxes (N, 4) normalised (cx, cy, w, h)."""
    count = len(texts)
    if not count or not (len(images) == len(predicted) == len(true) == count):
        raise ValueError(f"draw_grounding: need as many images ({len(images)}), predicted ({len(predicted)}) and "
                         f"true boxes ({len(true)}) as texts ({count}), at least one")
    if images.dtype != torch.uint8:
        raise ValueError(f"draw_grounding: images must be uint8 pixels (N, 3, H, W), got {images.dtype}")
    if columns <= 0 or tile <= 0:
        raise ValueError(f"draw_grounding: columns ({columns}) and tile ({tile}) must be positive")
    width, height = grounding_grid_size(count, columns, tile)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    row_height = tile + CAPTION_LINES * LINE_HEIGHT + 4
    chars = max(8, tile // 6)
    for i, pixels in enumerate(images.cpu().permute(0, 2, 3, 1).contiguous()):
        left, top = (i % columns) * tile, (i // columns) * row_height
        canvas.paste(Image.fromarray(pixels.numpy()).resize((tile, tile), Image.BICUBIC), (left, top))
        for box, colour in ((true[i], TRUE_COLOUR), (predicted[i], PREDICTED_COLOUR)):
            x0, y0, x1, y1 = box_pixels(box, tile)
            draw.rectangle((left + x0, top + y0, left + x1, top + y1), outline=colour, width=LINE_WIDTH)
        lines = textwrap.wrap(texts[i], chars)[:CAPTION_LINES]
        for j, line in enumerate(lines):
            draw.text((left + 2, top + tile + 2 + j * LINE_HEIGHT), line, fill=TEXT_COLOUR, font=font)
    draw.text((2, height - LINE_HEIGHT - 2), LEGEND, fill=TEXT_COLOUR, font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path


def draw_grounding_examples(model, spec, path: str | Path, count: int = 8, columns: int = 4, tile: int = 192) -> Path:
    """The first ``count`` region queries of ``spec``'s region corpus (a data spec in
    evaluation mode) with the model's predicted boxes, drawn by ``draw_grounding``."""
    from training.evaluation.eval_sets import eval_stream
    from training.evaluation.evaluator import predict_boxes

    regions = spec.corpora_of("region")
    if not regions:
        raise ValueError("draw_grounding_examples: the eval data spec has no region corpus")
    was_training = model.training
    model.eval()
    try:
        boxes = predict_boxes(model, eval_stream(spec, regions[0]), max_queries=count)
    finally:
        model.train(was_training)
    return draw_grounding(boxes["images"], boxes["predicted"], boxes["true"], boxes["texts"], path, columns, tile)
