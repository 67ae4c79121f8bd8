"""Every input format, built from the demo corpus and read back with webdataset, against an
independent reading of the source annotation files."""
from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import io
import json
import pickle
from pathlib import Path

import pytest
from PIL import Image

from shards_support import build, load_json, read_back

SPLIT = "train"


def expected_key(prefix: str, file_name: str) -> str:
    return f"{prefix}_{file_name[:file_name.rindex('.')]}"  # demo names are plain "<n>.jpg"


@pytest.fixture(scope="module")
def annotations(demo_corpus) -> Path:
    return demo_corpus / "annotations"


def coco_images(annotations: Path) -> list[dict]:
    return load_json(annotations / f"coco_captions_{SPLIT}.json")["images"]


def assert_images_pass_through(samples, demo_corpus):
    for sample in samples:
        path = demo_corpus / "images" / sample["json"]["original"]["path"]
        assert sample["jpg"] == path.read_bytes()
        with Image.open(io.BytesIO(sample["jpg"])) as image:
            assert (sample["json"]["width"], sample["json"]["height"]) == image.size


def test_jsonl(tmp_path, demo_corpus, annotations):
    assert build(tmp_path, [("jsonl", annotations / f"captions_{SPLIT}.jsonl")], demo_corpus / "images",
                 "--prefix", "gen", "--samples-per-shard", "16") == 0
    lines = [json.loads(l) for l in (annotations / f"captions_{SPLIT}.jsonl").read_text().splitlines()]
    samples = read_back(tmp_path)
    assert [s["__key__"] for s in samples] == [expected_key("gen", l["image"]) for l in lines]
    assert [s["json"]["captions"] for s in samples] == [l["captions"] for l in lines]
    assert [s["txt"].decode() for s in samples] == [l["captions"][0] for l in lines]
    assert all(s["json"]["regions"] == [] and s["json"]["source"] == "gen" for s in samples)
    assert_images_pass_through(samples, demo_corpus)
    assert len(list(tmp_path.glob("gen-*.tar"))) == -(-len(lines) // 16)


def test_csv(tmp_path, demo_corpus, annotations):
    assert build(tmp_path, [("csv", annotations / f"captions_{SPLIT}.csv")], demo_corpus / "images", "--prefix", "cc") == 0
    expected: dict[str, list[str]] = {}
    with open(annotations / f"captions_{SPLIT}.csv", newline="") as f:
        for row in csv.DictReader(f):
            expected.setdefault(expected_key("cc", row["image"]), []).append(row["caption"])
    samples = read_back(tmp_path)
    assert {s["__key__"]: s["json"]["captions"] for s in samples} == expected
    assert [s["__key__"] for s in samples] == list(expected)


def test_coco_captions(tmp_path, demo_corpus, annotations):
    path = annotations / f"coco_captions_{SPLIT}.json"
    assert build(tmp_path, [("coco-captions", path)], demo_corpus / "images", "--prefix", "coco") == 0
    coco = load_json(path)
    captions = {}
    for ann in coco["annotations"]:
        captions.setdefault(ann["image_id"], []).append(ann["caption"])
    samples = read_back(tmp_path)
    assert [s["__key__"] for s in samples] == [expected_key("coco", i["file_name"]) for i in coco["images"]]
    assert [s["json"]["captions"] for s in samples] == [captions[i["id"]] for i in coco["images"]]
    assert [(s["json"]["width"], s["json"]["height"]) for s in samples] == [(i["width"], i["height"]) for i in coco["images"]]
    assert_images_pass_through(samples, demo_corpus)


def test_coco_instances(tmp_path, demo_corpus, annotations):
    path = annotations / f"coco_instances_{SPLIT}.json"
    assert build(tmp_path, [("coco-instances", path)], demo_corpus / "images", "--prefix", "inst") == 0
    coco = load_json(path)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    regions = {}
    for ann in coco["annotations"]:
        regions.setdefault(ann["image_id"], []).append({"box": ann["bbox"], "captions": [], "label": names[ann["category_id"]]})
    samples = read_back(tmp_path)
    assert [s["__key__"] for s in samples] == [expected_key("inst", i["file_name"]) for i in coco["images"]]
    assert [s["json"]["regions"] for s in samples] == [regions[i["id"]] for i in coco["images"]]
    assert all(s["json"]["captions"] == [] and "txt" not in s for s in samples)


def test_vg_regions(tmp_path, demo_corpus, annotations):
    path = annotations / f"vg_regions_{SPLIT}.json"
    assert build(tmp_path, [("vg-regions", path)], demo_corpus / "images", "--prefix", "vg") == 0
    entries = load_json(path)
    samples = read_back(tmp_path)
    assert [s["__key__"] for s in samples] == [f"vg_{e['id']}" for e in entries]
    assert [s["json"]["regions"] for s in samples] == [
        [{"box": [r["x"], r["y"], r["width"], r["height"]], "captions": [r["phrase"]], "label": None} for r in e["regions"]]
        for e in entries]


def test_refcoco_keeps_only_the_chosen_split(tmp_path, demo_corpus, annotations):
    refs_path = annotations / "refcoco" / "refs(unc).p"
    assert build(tmp_path, [("refcoco", refs_path)], demo_corpus / "images", "--prefix", "ref", "--refcoco-split", "train") == 0
    refs = pickle.loads(refs_path.read_bytes())
    instances = load_json(annotations / "refcoco" / "instances.json")
    files = {i["id"]: i["file_name"] for i in instances["images"]}
    boxes = {a["id"]: a["bbox"] for a in instances["annotations"]}
    names = {c["id"]: c["name"] for c in instances["categories"]}
    expected: dict[str, list] = {}
    for ref in refs:
        if ref["split"] == "train":
            expected.setdefault(expected_key("ref", files[ref["image_id"]]), []).append(
                {"box": boxes[ref["ann_id"]], "captions": [s["sent"] for s in ref["sentences"]], "label": names[ref["category_id"]]})
    samples = read_back(tmp_path)
    assert {s["__key__"]: s["json"]["regions"] for s in samples} == expected
    assert len(samples) == len(coco_images(annotations))  # every train image, no val image


def test_video_jsonl(tmp_path, demo_corpus, annotations):
    path = annotations / f"videos_{SPLIT}.jsonl"
    assert build(tmp_path, [("video-jsonl", path)], demo_corpus / "videos", "--prefix", "vid") == 0
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    samples = read_back(tmp_path)
    assert [s["__key__"] for s in samples] == [expected_key("vid", l["video"]) for l in lines]
    assert any("start" in l for l in lines)
    for sample, line in zip(samples, lines):
        meta = sample["json"]
        assert sample["mp4"] == (demo_corpus / "videos" / line["video"]).read_bytes()
        assert meta["captions"] == line["captions"] and sample["txt"].decode() == line["captions"][0]
        assert (meta["frames"], meta["fps"], meta["duration"]) == (line["frames"], line["fps"], line["duration"])
        assert (meta["start"], meta["end"]) == (line.get("start"), line.get("end"))
        assert (meta["width"], meta["height"], meta["regions"]) == (128, 128, [])


def merged_sources(annotations: Path) -> list[tuple[str, Path]]:
    return [("coco-captions", annotations / f"coco_captions_{SPLIT}.json"),
            ("coco-instances", annotations / f"coco_instances_{SPLIT}.json"),
            ("vg-regions", annotations / f"vg_regions_{SPLIT}.json")]


def expected_merged(annotations: Path) -> dict[str, dict]:
    """Per file name: captions, then instance regions, then VG regions, in the files' order."""
    coco = load_json(annotations / f"coco_captions_{SPLIT}.json")
    instances = load_json(annotations / f"coco_instances_{SPLIT}.json")
    names = {c["id"]: c["name"] for c in instances["categories"]}
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    merged = {i["file_name"]: {"captions": [], "regions": [], "size": (i["width"], i["height"])} for i in coco["images"]}
    for ann in coco["annotations"]:
        merged[files[ann["image_id"]]]["captions"].append(ann["caption"])
    for ann in instances["annotations"]:
        merged[files[ann["image_id"]]]["regions"].append((ann["bbox"], [], names[ann["category_id"]]))
    for entry in load_json(annotations / f"vg_regions_{SPLIT}.json"):
        for r in entry["regions"]:
            merged[f"{entry['id']}.jpg"]["regions"].append(([r["x"], r["y"], r["width"], r["height"]], [r["phrase"]], None))
    return merged


def test_merged_sources_give_one_sample_per_image_and_a_true_manifest(tmp_path, demo_corpus, annotations):
    assert build(tmp_path, merged_sources(annotations), demo_corpus / "images", "--prefix", "img",
                 "--samples-per-shard", "25") == 0
    expected = expected_merged(annotations)
    samples = read_back(tmp_path)
    assert [s["__key__"] for s in samples] == [expected_key("img", name) for name in expected]
    for sample, (name, want) in zip(samples, expected.items()):
        assert sample["json"]["captions"] == want["captions"]
        assert [(r["box"], r["captions"], r["label"]) for r in sample["json"]["regions"]] == want["regions"]
        assert sample["json"]["original"] == {"path": name, "width": want["size"][0], "height": want["size"][1]}
    manifest = load_json(tmp_path / "manifest.json")
    assert manifest["version"] == importlib.metadata.version("x2vlm-pretrain")
    assert manifest["command"].startswith("x2vlm-shards build --media-root ")
    assert manifest["totals"] == {
        "shards": 3, "rejected": 0, "samples": len(expected), "bytes": sum(p.stat().st_size for p in tmp_path.glob("*.tar")),
        "captions": sum(len(w["captions"]) for w in expected.values()),
        "regions": sum(len(w["regions"]) for w in expected.values())}
    assert manifest["sources"] == {"img": {k: manifest["totals"][k] for k in ("samples", "captions", "regions")}}
    assert [s["samples"] for s in manifest["shards"]] == [25, 25, len(expected) - 50]
    for shard in manifest["shards"]:
        data = (tmp_path / shard["name"]).read_bytes()
        assert (shard["bytes"], shard["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert (tmp_path / "rejected.jsonl").read_text() == ""


def test_max_image_side_resizes_and_rescales_boxes_exactly(tmp_path, demo_corpus, annotations):
    side = 150
    assert build(tmp_path, merged_sources(annotations), demo_corpus / "images", "--prefix", "small",
                 "--max-image-side", str(side), "--jpeg-quality", "80") == 0
    expected = expected_merged(annotations)
    samples = read_back(tmp_path)
    assert len(samples) == len(expected)
    resized = 0
    for sample, (name, want) in zip(samples, expected.items()):
        width, height = want["size"]
        if max(width, height) <= side:
            stored = (width, height)
            assert sample["jpg"] == (demo_corpus / "images" / name).read_bytes()
        else:
            long_side, short_side = max(width, height), min(width, height)
            short = round(short_side * side / long_side)
            stored = (side, short) if width >= height else (short, side)
            resized += 1
        with Image.open(io.BytesIO(sample["jpg"])) as image:
            assert image.format == "JPEG" and image.size == stored
        meta = sample["json"]
        assert (meta["width"], meta["height"]) == stored
        assert meta["original"] == {"path": name, "width": width, "height": height}
        sx, sy = stored[0] / width, stored[1] / height
        want_boxes = [[x * stored[0] / width, y * stored[1] / height, w * stored[0] / width, h * stored[1] / height]
                      for (x, y, w, h), _, _ in want["regions"]]
        assert [r["box"] for r in meta["regions"]] == want_boxes
        assert all(abs(r["box"][0] - b[0][0] * sx) < 1e-9 for r, b in zip(meta["regions"], want["regions"]))
        assert [r["captions"] for r in meta["regions"]] == [c for _, c, _ in want["regions"]]
    assert resized >= len(expected) // 2


@pytest.mark.parametrize("fmt, member", [("PNG", "png"), ("WEBP", "webp")])
def test_png_and_webp_keep_their_format_whether_passed_through_or_resized(tmp_path, demo_corpus, fmt, member):
    media = tmp_path / "media"
    media.mkdir()
    name = f"wide.{member}"
    with Image.open(demo_corpus / "images/1.jpg") as image:
        image.load()
        image.resize((300, 200)).save(media / name, format=fmt)
    (tmp_path / "a.jsonl").write_text(json.dumps({"image": name, "caption": "wide"}) + "\n")
    for max_side, size in ((None, (300, 200)), ("120", (120, 80))):
        out = tmp_path / f"out-{max_side}"
        extra = ("--max-image-side", max_side) if max_side else ()
        assert build(out, [("jsonl", tmp_path / "a.jsonl")], media, "--prefix", "x", *extra) == 0
        [sample] = read_back(out)
        assert "jpg" not in sample and sample["json"]["width"] == size[0]
        with Image.open(io.BytesIO(sample[member])) as image:
            assert (image.format, image.size) == (fmt, size)
        assert (sample[member] == (media / name).read_bytes()) == (max_side is None)
