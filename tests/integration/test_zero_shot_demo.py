"""Zero-shot classification of the demo's shapes by the demo export (the session's `trained_demo`).

Every shape of the held-out images (the eval split's COCO instance boxes) is cut out with a
margin around its box and filed under its name as the demo's captions say it, colour and kind
("red circle", 6 x 5 classes), in an ImageFolder tree; `x2vlm-zero-shot` classifies them among
the classes of the tree with its default prompts ("a photo of a red circle.", ...). Top-1
accuracy must reach MARGIN times chance.

What the demo model tells apart is mostly colour: at 64 pixels (4 x 4 patches) the kind of a
shape is near chance, its colour near always right (about 0.25 top-1 among the 30 names, 7x
chance, after the demo's 400 steps).
"""
from __future__ import annotations

import io
import json
import sys
from collections import Counter
from pathlib import Path

from PIL import Image

from data_pipeline.demo_corpus.scenes import COLOURS, SHAPES
from training.zero_shot import main

MARGIN = 3.0
BOX_MARGIN = 0.25  # of the box's longer side, on every side: some background, as around a single shape


def shape_tree(corpus: Path, out: Path) -> Counter:
    """OUT/COLOUR_KIND/IMAGE-INSTANCE.png for every shape of the eval split; the shapes per class."""
    instances = json.loads((corpus / "annotations/coco_instances_eval.json").read_text())
    kinds = {category["id"]: category["name"] for category in instances["categories"]}
    files = {image["id"]: image["file_name"] for image in instances["images"]}
    counts: Counter = Counter()
    for instance in instances["annotations"]:
        image = Image.open(corpus / "images" / files[instance["image_id"]]).convert("RGB")
        x, y, w, h = instance["bbox"]
        pad = BOX_MARGIN * max(w, h)
        crop = image.crop((round(max(0, x - pad)), round(max(0, y - pad)),
                           round(min(image.width, x + w + pad)), round(min(image.height, y + h + pad))))
        name = f"{instance['attributes']['colour']}_{kinds[instance['category_id']]}"
        (out / name).mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        crop.save(buffer, format="PNG")
        (out / name / f"{instance['image_id']}-{instance['id']}.png").write_bytes(buffer.getvalue())
        counts[name] += 1
    return counts


def test_demo_export_classifies_held_out_shapes_above_chance(trained_demo, tmp_path, capsys):
    counts = shape_tree(trained_demo.root / "runs/demo/corpus", tmp_path / "shapes")
    assert set(counts) <= {f"{colour}_{kind}" for colour in COLOURS for kind in SHAPES} and len(counts) >= 10
    out = tmp_path / "zero_shot.json"
    assert main([str(trained_demo.export), "--images", str(tmp_path / "shapes"), "--device", "cpu", "--out", str(out),
                 "--no-progress"]) == 0
    figures = json.loads(out.read_text())
    assert figures["images"] == sum(counts.values()) and figures["classes"] == len(counts)
    chance = figures["chance_top1"]
    with capsys.disabled():
        print(f"\nzero-shot shapes of the demo export: {figures['images']} held-out shapes, {figures['classes']} "
              f"classes: top-1 {figures['top1']:.4f} = {figures['top1'] / chance:.1f}x chance ({chance:.4f}), "
              f"top-5 {figures['top5']:.4f}", file=sys.stderr)
    assert figures["top1"] >= MARGIN * chance
