"""A corpus with planted faults builds with exit 0: every good sample is in the shards, every
bad record, sample, caption and region is in rejected.jsonl with its reason."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from shards_support import build, read_back, rejected_lines


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


@pytest.fixture(scope="module")
def fault_build(demo_corpus, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("faults")
    media, out = root / "media", root / "out"
    (media / "clips").mkdir(parents=True)
    images = demo_corpus / "images"
    for n in (1, 3, 5, 6, 7):
        shutil.copy(images / f"{n}.jpg", media / f"{n}.jpg")
    (media / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    whole = (images / "2.jpg").read_bytes()
    (media / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    shutil.copy(images / "8.jpg", media / "a.b.jpg")
    shutil.copy(images / "9.jpg", media / "a_b.jpg")  # same key as a.b.jpg once sanitised
    shutil.copy(demo_corpus / "videos" / "1.mp4", media / "clips" / "good.mp4")
    (media / "clips" / "empty.mp4").write_bytes(b"")

    lines = [
        json.dumps({"image": "1.jpg", "captions": ["one good caption"]}).encode(),
        json.dumps({"image": "corrupt.jpg", "caption": "corrupt"}).encode(),
        json.dumps({"image": "truncated.jpg", "caption": "truncated"}).encode(),
        json.dumps({"image": "missing.jpg", "caption": "missing"}).encode(),
        json.dumps({"image": "3.jpg", "captions": ["", "three kept"]}).encode(),
        json.dumps({"image": "5.jpg", "captions": ["   "]}).encode(),
        b'{"image": "6.jpg", "captions": ["bad \xff\xfe bytes", "six kept"]}',
        b'{"image": "7.jpg", "captions": [',
        json.dumps({"image": "a.b.jpg", "caption": "dotted name"}).encode(),
        json.dumps({"image": "a_b.jpg", "caption": "clashing name"}).encode(),
    ]
    (root / "images.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    width, height = image_size(media / "1.jpg")
    regions = [
        ("inside", 10, 20, 30, 40), ("partly outside", width - 10, height - 6, 30, 40), ("wholly outside", width, 10, 20, 20),
        ("negative width", 10, 10, -5, 20), ("zero height", 10, 10, 5, 0), ("", 10, 10, 5, 5),
    ]
    (root / "vg.json").write_text(json.dumps([{"id": 1, "regions": [
        {"phrase": p, "x": x, "y": y, "width": w, "height": h} for p, x, y, w, h in regions]}]))
    (root / "videos.jsonl").write_text(
        json.dumps({"video": "clips/good.mp4", "captions": ["a good video"]}) + "\n"
        + json.dumps({"video": "clips/empty.mp4", "captions": ["an empty video"]}) + "\n"
        + json.dumps({"video": "clips/good.mp4", "captions": ["too long a clip"], "start": 0.5, "end": 99.0}).replace("good", "good2") + "\n")
    shutil.copy(media / "clips" / "good.mp4", media / "clips" / "good2.mp4")
    code = build(out, [("jsonl", root / "images.jsonl"), ("vg-regions", root / "vg.json"), ("video-jsonl", root / "videos.jsonl")],
                 media, "--prefix", "f", "--samples-per-shard", "3")
    assert code == 0
    return out, root


def test_every_good_sample_is_present_with_only_its_good_parts(fault_build):
    out, root = fault_build
    width, height = image_size(root / "media" / "1.jpg")
    samples = {s["__key__"]: s for s in read_back(out)}
    assert list(samples) == ["f_1", "f_3", "f_6", "f_a_b", "f_clips_good"]
    meta = {k: s["json"] for k, s in samples.items()}
    assert meta["f_1"]["captions"] == ["one good caption"]
    assert meta["f_1"]["regions"] == [
        {"box": [10, 20, 30, 40], "captions": ["inside"], "label": None},
        {"box": [width - 10, height - 6, 10, 6], "captions": ["partly outside"], "label": None},  # clipped
    ]
    assert meta["f_3"]["captions"] == ["three kept"]
    assert meta["f_6"]["captions"] == ["six kept"]
    assert meta["f_a_b"]["captions"] == ["dotted name"] and meta["f_a_b"]["original"]["path"] == "a.b.jpg"
    assert meta["f_clips_good"]["captions"] == ["a good video"] and "mp4" in samples["f_clips_good"]


def demo_video_duration(demo_corpus: Path, name: str) -> float:
    for split in ("train", "eval"):
        for line in (demo_corpus / f"annotations/videos_{split}.jsonl").read_text().splitlines():
            if json.loads(line)["video"] == name:
                return json.loads(line)["duration"]
    raise KeyError(name)


def test_every_bad_input_is_in_rejected_jsonl_with_its_reason(fault_build, demo_corpus):
    out, root = fault_build
    duration = demo_video_duration(demo_corpus, "1.mp4")
    width, height = image_size(root / "media" / "1.jpg")
    got = [(r["item"], r.get("media"), r["reason"]) for r in rejected_lines(out)]
    # Records the readers refuse come first, then the shards' rejections in shard order.
    assert got[0] == ("record", None, "line is not valid JSON (Expecting value)")
    assert got[1] == ("record", "a_b.jpg", "duplicate key f_a_b: 'a.b.jpg' and 'a_b.jpg' map to the same key")
    rest = got[2:]
    assert rest[:4] == [
        ("region", "1.jpg", f"box lies wholly outside the {width}x{height} image"),
        ("region", "1.jpg", "box has zero area or a negative size (w=-5, h=20)"),
        ("region", "1.jpg", "box has zero area or a negative size (w=5, h=0)"),
        ("caption", "1.jpg", "empty caption"),
    ]
    assert rest[4] == ("region", "1.jpg", "region has no valid caption or label")
    assert rest[5][:2] == ("sample", "corrupt.jpg") and rest[5][2] == "cannot decode image: not a recognisable image file"
    assert rest[6][:2] == ("sample", "truncated.jpg") and rest[6][2].startswith("cannot decode image: OSError: image file is truncated")
    assert rest[7:] == [
        ("sample", "missing.jpg", "missing file"),
        ("caption", "3.jpg", "empty caption"),
        ("caption", "5.jpg", "empty caption"),
        ("sample", "5.jpg", "no valid caption or region left"),
        ("caption", "6.jpg", "caption is not valid UTF-8"),
        ("sample", "clips/empty.mp4", "cannot decode video: the file is empty (0 bytes)"),
        ("sample", "clips/good2.mp4", f"clip start=0.5 end=99.0 does not lie inside the {duration} s video"),
    ]
    lines = rejected_lines(out)
    assert lines[0]["origin"] == f"{root / 'images.jsonl'}:8"
    assert lines[2 + 5]["origin"] == f"{root / 'images.jsonl'}:2" and lines[2 + 5]["key"] == "f_corrupt"


def test_manifest_counts_the_rejections_and_the_samples(fault_build):
    out, _ = fault_build
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["samples"] == 5 and manifest["totals"]["rejected"] == len(rejected_lines(out)) == 16
    assert [i["records"] for i in manifest["inputs"]] == [9, 1, 3]  # lines parsed, duplicate included
    assert [i["rejected"] for i in manifest["inputs"]] == [2, 0, 0]
