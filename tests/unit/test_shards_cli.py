"""The shard CLI's user-facing behaviour: clear errors, verify, inspect, show, help, keys."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from data_pipeline.shards import main
from data_pipeline.shard_tools.keys import sample_key
from data_pipeline.shard_tools.show_command import BOX_COLOURS
from shards_support import build, load_json, read_back


@pytest.fixture(scope="module")
def small_build(demo_corpus, tmp_path_factory) -> Path:
    """The eval split, captions + VG regions, in shards of 6."""
    out = tmp_path_factory.mktemp("small") / "out"
    annotations = demo_corpus / "annotations"
    assert build(out, [("coco-captions", annotations / "coco_captions_eval.json"), ("vg-regions", annotations / "vg_regions_eval.json")],
                 demo_corpus / "images", "--prefix", "ev", "--samples-per-shard", "6") == 0
    return out


def run_build(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = main(["build", *argv])
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    return code, capsys.readouterr().err


def test_user_mistakes_are_clear_errors_naming_what_is_wrong(capsys, demo_corpus, tmp_path):
    coco = str(demo_corpus / "annotations/coco_captions_eval.json")
    images = str(demo_corpus / "images")
    out = str(tmp_path / "out")
    missing = str(tmp_path / "nope.json")
    code, err = run_build(capsys, "--format", "coco-captions", "--annotations", missing, "--media-root", images, "--output", out)
    assert code == 2 and f"annotation file not found: {missing}" in err
    code, err = run_build(capsys, "--format", "coco-foo", "--annotations", coco, "--media-root", images, "--output", out)
    assert code == 2 and "invalid choice: 'coco-foo'" in err
    for root in (tmp_path / "no-such-dir", demo_corpus / "images" / "1.jpg"):
        code, err = run_build(capsys, "--format", "coco-captions", "--annotations", coco, "--media-root", str(root), "--output", out)
        assert code == 2 and f"media root is not a directory: {root}" in err
    code, err = run_build(capsys, "--format", "vg-regions", "--annotations", coco, "--media-root", images, "--output", out)
    assert code == 2 and f"{coco}: is not a vg-regions file" in err
    code, err = run_build(capsys, "--format", "jsonl", "--annotations", coco, "--media-root", images, "--output", out)
    assert code == 2 and f"{coco}: no line is a JSON object, so it is not a jsonl file" in err
    code, err = run_build(capsys, "--format", "coco-captions", "--format", "jsonl", "--format", "csv",
                          "--annotations", coco, "--media-root", images, "--output", out)
    assert code == 2 and "give --format once or once per --annotations (1 files, 3 formats)" in err
    code, err = run_build(capsys, "--format", "jsonl", "--annotations", coco, "--media-root", images, "--output", out, "--prefix", "a.b")
    assert code == 2 and "--prefix 'a.b'" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.tar"))


def test_a_finished_build_is_not_overwritten_or_resumed_with_other_options(capsys, small_build, demo_corpus):
    argv = ["--format", "coco-captions", "--annotations", str(demo_corpus / "annotations/coco_captions_eval.json"),
            "--format", "vg-regions", "--annotations", str(demo_corpus / "annotations/vg_regions_eval.json"),
            "--media-root", str(demo_corpus / "images"), "--output", str(small_build), "--prefix", "ev", "--quiet"]
    code, err = run_build(capsys, *argv, "--samples-per-shard", "6")
    assert code == 2 and "pass --resume to continue it" in err
    code, err = run_build(capsys, *argv, "--samples-per-shard", "7", "--resume")
    assert code == 2 and "holds a build with other annotation files or options" in err
    before = {p.name: p.stat().st_ino for p in small_build.glob("*.tar")}
    code, _ = run_build(capsys, *argv, "--samples-per-shard", "6", "--resume")
    assert code == 0 and {p.name: p.stat().st_ino for p in small_build.glob("*.tar")} == before


def test_verify_passes_a_good_build_and_names_each_corrupt_shard(capsys, small_build, tmp_path):
    assert main(["verify", str(small_build)]) == 0
    assert "4 of 4 shards good" in capsys.readouterr().out
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in small_build.iterdir():
        if path.is_file():
            (copy / path.name).write_bytes(path.read_bytes())
    flipped = bytearray((copy / "ev-000001.tar").read_bytes())
    flipped[1500] ^= 0xFF  # inside the first sample's image
    (copy / "ev-000001.tar").write_bytes(bytes(flipped))
    (copy / "ev-000002.tar").write_bytes((copy / "ev-000002.tar").read_bytes()[:3000])
    (copy / "ev-000003.tar").unlink()
    assert main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    manifest = load_json(small_build / "manifest.json")
    assert f"CORRUPT {copy / 'ev-000001.tar'}: sha256 differs from the manifest" in out
    assert f"CORRUPT {copy / 'ev-000002.tar'}: 3000 bytes, the manifest says {manifest['shards'][2]['bytes']}" in out
    assert f"CORRUPT {copy / 'ev-000003.tar'}: listed in manifest.json but missing" in out
    assert "CORRUPT " + str(copy / "ev-000000.tar") not in out
    # A manifest this project did not write (entries without their fields): one line, exit 1.
    (copy / "manifest.json").write_text(json.dumps({"shards": [{"name": "ev-000000.tar"}]}))
    assert main(["verify", str(copy)]) == 1
    assert f"CORRUPT {copy / 'manifest.json'}: unreadable manifest (ValueError: shards[0] is not a " \
           "{name, samples, bytes, sha256} entry)" in capsys.readouterr().out
    # Without a manifest the tar structure itself is checked.
    (copy / "manifest.json").unlink()
    assert main(["verify", str(copy / "ev-00000[02].tar")]) == 1
    assert f"CORRUPT {copy / 'ev-000002.tar'}: unreadable tar" in capsys.readouterr().out


def test_inspect_counts_what_the_sources_hold(capsys, small_build, demo_corpus):
    coco = load_json(demo_corpus / "annotations/coco_captions_eval.json")
    regions = sum(len(e["regions"]) for e in load_json(demo_corpus / "annotations/vg_regions_eval.json"))
    assert main(["inspect", str(small_build / "ev-{000000..000003}.tar"), "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)
    counts = {"samples": len(coco["images"]), "captions": len(coco["annotations"]), "regions": regions}
    assert totals == {"shards": 4, **counts, "sources": {"ev": counts}}
    assert main(["inspect", str(small_build), "--samples", "1"]) == 0
    text = capsys.readouterr().out
    first = coco["images"][0]
    assert f"ev: {counts['samples']} samples" in text and f"ev_{first['id']}  jpg" in text
    assert main(["inspect", str(small_build / "nothing-*.tar")]) == 2
    assert "no shard matches" in capsys.readouterr().err


def test_inspect_and_verify_take_several_builds_and_count_per_source(capsys, small_build, demo_corpus):
    videos = small_build.parent / "videos"
    lines = (demo_corpus / "annotations/videos_eval.jsonl").read_text().splitlines()
    assert build(videos, [("video-jsonl", demo_corpus / "annotations/videos_eval.jsonl")], demo_corpus / "videos",
                 "--prefix", "vid") == 0
    spec = str(small_build.parent / "{out,videos}")
    assert main(["verify", spec]) == 0
    assert "5 of 5 shards good" in capsys.readouterr().out
    assert main(["inspect", spec, "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)
    video_counts = {"samples": len(lines), "captions": sum(len(json.loads(l)["captions"]) for l in lines), "regions": 0}
    assert totals["sources"]["vid"] == video_counts and set(totals["sources"]) == {"ev", "vid"}
    assert totals["samples"] == totals["sources"]["ev"]["samples"] + len(lines)


def test_show_draws_each_box_where_it_lies(capsys, small_build, tmp_path):
    grid = tmp_path / "grid.png"
    assert main(["show", str(small_build), "--out", str(grid), "--samples", "3", "--columns", "3", "--tile", "200"]) == 0
    first = read_back(small_build)[0]["json"]
    with Image.open(grid) as image:
        assert image.size == (3 * 200, 200 + 4 * 12)
        scale = 200 / max(first["width"], first["height"])
        x, y, w, h = first["regions"][0]["box"]
        # The middle of the box's left edge, away from the caption drawn at its top-left corner.
        assert image.getpixel((round(x * scale), round((y + h / 2) * scale))) == BOX_COLOURS[0]


def test_help_explains_every_command(capsys):
    for command, words in (("build", ("--max-image-side", "rejected.jsonl", "vg-regions", "byte-identical")),
                           ("inspect", ("--json",)), ("verify", ("sha256",)), ("show", ("--out",))):
        with pytest.raises(SystemExit) as stop:
            main([command, "--help"])
        assert stop.value.code == 0
        text = capsys.readouterr().out
        assert all(word in text for word in words), command


@pytest.mark.parametrize("media, key", [
    ("1.jpg", "p_1"), ("img.v2.jpg", "p_img_v2"), ("a/b/c.png", "p_a_b_c"), ("../../etc/x.jpg", "p_______etc_x"),
    ("/abs/path.jpeg", "p__abs_path"), ("noext", "p_noext"), ("caf\u00e9 au lait.webp", "p_caf__au_lait"), (".hidden", "p__hidden"),
])
def test_keys_hold_no_dots_or_separators(media, key):
    assert sample_key("p", media) == key


def test_member_names_from_awkward_paths_group_into_samples(tmp_path, demo_corpus):
    media = tmp_path / "media"
    (media / "sub.dir").mkdir(parents=True)
    data = (demo_corpus / "images/1.jpg").read_bytes()
    (media / "sub.dir" / "img.v2.jpg").write_bytes(data)
    (media / "x.jpg").write_bytes(data)
    lines = [{"image": "sub.dir/img.v2.jpg", "caption": "nested"}, {"image": "./sub.dir/../x.jpg", "caption": "dotted"}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    assert build(tmp_path / "out", [("jsonl", tmp_path / "a.jsonl")], media, "--prefix", "k") == 0
    with tarfile.open(tmp_path / "out/k-000000.tar") as tar:
        assert tar.getnames() == ["k_sub_dir_img_v2.jpg", "k_sub_dir_img_v2.json", "k_sub_dir_img_v2.txt",
                                  "k_x.jpg", "k_x.json", "k_x.txt"]
    samples = read_back(tmp_path / "out")
    assert [(s["__key__"], s["json"]["captions"]) for s in samples] == [("k_sub_dir_img_v2", ["nested"]), ("k_x", ["dotted"])]


WORDS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


@pytest.fixture(scope="module")
def img2dataset_output(demo_corpus, tmp_path_factory) -> Path:
    """Two shards as img2dataset writes them (webdataset's TarWriter; keys of shard and index
    digits; jpg, txt and its own json), with its parquet and stats files beside them."""
    out = tmp_path_factory.mktemp("img2dataset")
    images = sorted((demo_corpus / "images").glob("*.jpg"))[:8]
    for shard in range(2):
        with wds.TarWriter(str(out / f"{shard:05d}.tar")) as writer:
            for index in range(4):
                path = images[shard * 4 + index]
                key = f"{shard:05d}{index:04d}"
                with Image.open(path) as image:
                    width, height = image.size
                meta = {"url": f"https://example.com/{path.name}", "key": key, "status": "success",
                        "error_message": None, "width": width, "height": height, "original_width": width * 2,
                        "original_height": height * 2, "exif": "{}", "sha256": "ab" * 32}
                writer.write({"__key__": key, "jpg": path.read_bytes(),
                              "txt": f"a {WORDS[shard * 4 + index]} photo".encode(), "json": json.dumps(meta).encode()})
        (out / f"{shard:05d}.parquet").write_bytes(b"PAR1 not really a parquet PAR1")
        (out / f"{shard:05d}_stats.json").write_text(json.dumps({"count": 4, "successes": 4, "failed_to_download": 0}))
    return out


def test_inspect_and_verify_read_img2dataset_shards(capsys, img2dataset_output):
    for spec in (str(img2dataset_output), str(img2dataset_output / "*")):  # a glob also catches the sidecars
        assert main(["inspect", spec, "--json"]) == 0
        totals = json.loads(capsys.readouterr().out)
        counts = {"samples": 8, "captions": 8, "regions": 0}
        assert totals == {"shards": 2, **counts, "sources": {"(no source)": counts}}
    assert main(["inspect", str(img2dataset_output), "--samples", "1"]) == 0
    assert "000000000  jpg" in capsys.readouterr().out
    assert main(["verify", str(img2dataset_output)]) == 0
    out = capsys.readouterr().out
    assert "checking the shards' structure only" in out and "2 of 2 shards good" in out


def test_show_draws_img2dataset_samples(capsys, img2dataset_output, tmp_path):
    grid = tmp_path / "grid.png"
    assert main(["show", str(img2dataset_output / "*"), "--out", str(grid), "--samples", "6", "--columns", "3",
                 "--tile", "64"]) == 0
    with Image.open(grid) as image:
        assert image.size == (3 * 64, 2 * (64 + 4 * 12))
        for row in range(2):
            for column in range(3):
                tile = image.crop((column * 64, row * (64 + 48), (column + 1) * 64, row * (64 + 48) + 64))
                assert len(tile.getcolors(64 * 64)) > 20, (row, column)  # a picture, not a blank tile


def test_tools_name_a_damaged_shard_without_a_traceback(capsys, img2dataset_output, tmp_path):
    data = (img2dataset_output / "00001.tar").read_bytes()
    for name, damaged in (("cut.tar", data[:len(data) // 2]), ("garbage.tar", data[:2048] + b"\xff" * 4096)):
        (tmp_path / name).write_bytes(damaged)
        for command in (["inspect"], ["verify"], ["show", "--out", str(tmp_path / "g.png")]):
            assert main([command[0], str(tmp_path / name), *command[1:]]) == 1, (name, command)
            captured = capsys.readouterr()
            assert str(tmp_path / name) in captured.out + captured.err
            assert "Traceback" not in captured.out + captured.err
