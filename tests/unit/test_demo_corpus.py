"""The synthetic demo corpus: determinism, decodability, and annotations that match the pixels."""
from __future__ import annotations

import csv
import hashlib
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import decord
import numpy as np
import pytest
from PIL import Image

from data_pipeline.demo_corpus import DemoCorpusSpec, generate

# Reference colours, written down independently of the generator's table: a named colour
# must be the nearest of these to the mean colour of the pixels inside its box.
REFERENCE_COLOURS = {
    "red": (255, 0, 0), "green": (0, 150, 0), "blue": (0, 60, 255),
    "yellow": (255, 220, 0), "purple": (140, 40, 180), "orange": (255, 130, 0),
}
# Fraction of its box a shape fills: analytic values with room for JPEG edges and rounding.
FILL_RANGE = {"square": (0.93, 1.0), "circle": (0.70, 0.86), "triangle": (0.40, 0.62),
              "diamond": (0.40, 0.62), "star": (0.28, 0.52)}
BOX_TOLERANCE = 2  # pixels


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def foreground(pixels: np.ndarray) -> np.ndarray:
    """Pixels that differ clearly from the uniform background (shapes keep >= 2 px off the corner)."""
    background = pixels[0, 0].astype(int)
    return np.abs(pixels.astype(int) - background).sum(axis=2) > 90


def load_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate(DemoCorpusSpec(tmp_path / name, images=12, videos=3, seed=seed), progress=False)
    a, b, c = (tree_digest(tmp_path / n) for n in "abc")
    assert a == b
    assert len(a) == 12 + 3 + 1 + 6 * 2 + 3
    assert a["images/1.jpg"] != c["images/1.jpg"]


def test_every_image_decodes_with_its_annotated_size(demo_corpus):
    for split in ("train", "eval"):
        coco = load_json(demo_corpus / f"annotations/coco_captions_{split}.json")
        for entry in coco["images"]:
            with Image.open(demo_corpus / "images" / entry["file_name"]) as image:
                assert image.format == "JPEG"
                image.load()
                assert image.size == (entry["width"], entry["height"])
                assert 128 <= image.width <= 256 and 128 <= image.height <= 256


def test_every_box_lies_in_its_image_and_covers_exactly_its_shape(demo_corpus):
    categories = {c["id"]: c["name"] for c in load_json(demo_corpus / "annotations/coco_instances_train.json")["categories"]}
    checked = 0
    for split in ("train", "eval"):
        instances = load_json(demo_corpus / f"annotations/coco_instances_{split}.json")
        by_image = {}
        for ann in instances["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        for entry in instances["images"]:
            pixels = np.asarray(Image.open(demo_corpus / "images" / entry["file_name"]).convert("RGB"))
            mask = foreground(pixels)
            covered = np.zeros_like(mask)
            anns = by_image[entry["id"]]
            assert 1 <= len(anns) <= 4
            for ann in anns:
                x, y, w, h = ann["bbox"]
                assert w > 0 and h > 0 and x >= 0 and y >= 0
                assert x + w <= entry["width"] and y + h <= entry["height"]
                inside = mask[y:y + h, x:x + w]
                ys, xs = np.nonzero(inside)
                # The drawn shape reaches every side of its box.
                assert xs.min() <= BOX_TOLERANCE and ys.min() <= BOX_TOLERANCE
                assert xs.max() >= w - 1 - BOX_TOLERANCE and ys.max() >= h - 1 - BOX_TOLERANCE
                kind = categories[ann["category_id"]]
                low, high = FILL_RANGE[kind]
                assert low <= inside.mean() <= high, (entry["file_name"], kind, inside.mean())
                mean = pixels[y:y + h, x:x + w][inside].mean(axis=0)
                nearest = min(REFERENCE_COLOURS, key=lambda n: np.square(mean - REFERENCE_COLOURS[n]).sum())
                assert nearest == ann["attributes"]["colour"]
                covered[max(0, y - BOX_TOLERANCE):y + h + BOX_TOLERANCE, max(0, x - BOX_TOLERANCE):x + w + BOX_TOLERANCE] = True
                checked += 1
            # No drawn shape lies outside the annotated boxes.
            assert not (mask & ~covered).any(), entry["file_name"]
    assert checked >= 80


def test_captions_and_phrases_name_what_is_drawn(demo_corpus):
    instances = load_json(demo_corpus / "annotations/coco_instances_train.json")
    names = {c["id"]: c["name"] for c in instances["categories"]}
    shapes = {}
    for ann in instances["annotations"]:
        shapes.setdefault(ann["image_id"], {})[f"{ann['attributes']['colour']} {names[ann['category_id']]}"] = ann["bbox"]
    captions = {}
    for ann in load_json(demo_corpus / "annotations/coco_captions_train.json")["annotations"]:
        captions.setdefault(ann["image_id"], []).append(ann["caption"])
    pair = re.compile(r"^an? (\w+ \w+) to the (left|right) of an? (\w+ \w+)$")
    relations = 0
    for image_id, texts in captions.items():
        assert len(texts) >= 2
        for text in texts:
            match = pair.match(text)
            if match:
                first, side, second = match.groups()
                cx = {n: shapes[image_id][n][0] + shapes[image_id][n][2] / 2 for n in (first, second)}
                assert (cx[first] < cx[second]) == (side == "left"), text
                relations += 1
            for name in re.findall(r"(red|green|blue|yellow|purple|orange) (\w+)", text):
                assert " ".join(name) in shapes[image_id], (text, shapes[image_id])
    assert relations >= 4
    for entry in load_json(demo_corpus / "annotations/vg_regions_train.json"):
        for region in entry["regions"]:
            colour_shape = " ".join(region["phrase"].split()[2:4])
            assert shapes[entry["id"]][colour_shape] == [region["x"], region["y"], region["width"], region["height"]]


def test_generic_csv_jsonl_and_refcoco_agree_with_coco(demo_corpus):
    ann = demo_corpus / "annotations"
    coco_caps = {}
    coco = load_json(ann / "coco_captions_train.json")
    files = {e["id"]: e["file_name"] for e in coco["images"]}
    for a in coco["annotations"]:
        coco_caps.setdefault(files[a["image_id"]], []).append(a["caption"])
    jsonl = {}
    for line in (ann / "captions_train.jsonl").read_text().splitlines():
        row = json.loads(line)
        jsonl[row["image"]] = row["captions"]
    with open(ann / "captions_train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    from_csv = {}
    for row in rows:
        from_csv.setdefault(row["image"], []).append(row["caption"])
    assert jsonl == coco_caps == from_csv
    instances = load_json(ann / "refcoco/instances.json")
    boxes = {a["id"]: a["bbox"] for a in instances["annotations"]}
    refs = pickle.loads((ann / "refcoco/refs(unc).p").read_bytes())
    assert len(refs) == len(boxes)
    assert {r["split"] for r in refs} == {"train", "val"}
    assert all(r["ann_id"] in boxes and r["sentences"][0]["sent"] for r in refs)


def test_train_and_eval_splits_are_disjoint(demo_corpus):
    summary = load_json(demo_corpus / "corpus.json")
    assert summary["images"] == {"train": 60, "eval": 20}
    assert summary["videos"] == {"train": 9, "eval": 3}
    train = {e["id"] for e in load_json(demo_corpus / "annotations/coco_captions_train.json")["images"]}
    held_out = {e["id"] for e in load_json(demo_corpus / "annotations/coco_captions_eval.json")["images"]}
    assert not train & held_out and len(train | held_out) == 80


def test_every_video_decodes_with_decord_and_moves_as_captioned(demo_corpus):
    direction_of = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}
    seen = 0
    for split in ("train", "eval"):
        for line in (demo_corpus / f"annotations/videos_{split}.jsonl").read_text().splitlines():
            entry = json.loads(line)
            reader = decord.VideoReader(str(demo_corpus / "videos" / entry["video"]))
            assert len(reader) == entry["frames"] and 8 <= entry["frames"] <= 16
            assert abs(reader.get_avg_fps() - entry["fps"]) < 1e-6
            first, last = reader[0].asnumpy(), reader[len(reader) - 1].asnumpy()
            assert first.shape == (128, 128, 3)
            centroids = [np.argwhere(foreground(f)).mean(axis=0)[::-1] for f in (first, last)]  # (x, y)
            motion = centroids[1] - centroids[0]
            word = re.match(r"^an? \w+ \w+ moving (\w+)$", entry["captions"][0]).group(1)
            assert np.dot(motion, direction_of[word]) > 20, (entry, motion)
            if "start" in entry:
                assert 0 <= entry["start"] < entry["end"] <= entry["duration"]
            seen += 1
    assert seen == 12


def test_cli_writes_corpus_and_rejects_bad_arguments(tmp_path):
    cli = [sys.executable, "-m", "data_pipeline.shards"]
    help_text = subprocess.run(cli + ["demo", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--seed" in help_text and "--videos" in help_text
    done = subprocess.run(cli + ["demo", "--out", str(tmp_path / "c"), "--images", "5", "--videos", "1", "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert str(tmp_path / "c") in done.stdout
    assert len(list((tmp_path / "c/images").glob("*.jpg"))) == 5
    bad = subprocess.run(cli + ["demo", "--out", str(tmp_path / "d"), "--eval-fraction", "1.5"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--eval-fraction" in bad.stderr


def test_pillow_is_the_simd_build():
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, str(repo / "scripts/check_pillow_simd.py")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "pillow-simd" in result.stdout
