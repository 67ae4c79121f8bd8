"""Annotation files and media roots written by someone else: `x2vlm-shards build` reads
nothing outside --media-root, turns every malformed record into a line of rejected.jsonl
(or, for a file that is not of its format, exit 2 with one line naming it), and reads
refs pickles without running anything in them."""
from __future__ import annotations

import json
import os
import pickle
import shlex
import shutil
from pathlib import Path

import pytest

from shards_support import build, read_back

NAN = float("nan")


def strict_rejected(out: Path) -> list[dict]:
    """rejected.jsonl, which must be strict JSON: no NaN or Infinity even when the input had them."""
    def refuse(constant):
        raise AssertionError(f"rejected.jsonl holds {constant}")
    return [json.loads(line, parse_constant=refuse) for line in (out / "rejected.jsonl").read_text().splitlines()]


def reasons(out: Path) -> list[tuple[str, str]]:
    return [(r["item"], r["reason"]) for r in strict_rejected(out)]


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def image_size(demo_corpus: Path, number: int) -> tuple[int, int]:
    images = json.loads((demo_corpus / "annotations/refcoco/instances.json").read_text())["images"]
    entry = next(i for i in images if i["file_name"] == f"{number}.jpg")
    return entry["width"], entry["height"]


@pytest.fixture
def media(demo_corpus, tmp_path) -> Path:
    """media/{1,2,3}.jpg: three demo images inside the media root."""
    root = tmp_path / "media"
    root.mkdir()
    for n in (1, 2, 3):
        shutil.copy(demo_corpus / "images" / f"{n}.jpg", root / f"{n}.jpg")
    return root


# Media paths ---------------------------------------------------------------------------

def test_no_file_outside_the_media_root_reaches_a_shard(demo_corpus, media, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.jpg"
    shutil.copy(demo_corpus / "images" / "9.jpg", secret)  # a valid image: only the path check can keep it out
    os.symlink(secret, media / "link_out.jpg")
    os.symlink(outside, media / "dir_out")
    os.symlink("3.jpg", media / "link_in.jpg")  # a link that stays inside the root is fine
    lines = [{"image": "1.jpg", "caption": "inside"},
             {"image": "../outside/secret.jpg", "caption": "climbs out"},
             {"image": str(secret), "caption": "absolute"},
             {"image": "link_out.jpg", "caption": "file link out"},
             {"image": "dir_out/secret.jpg", "caption": "directory link out"},
             {"image": "2.jpg/../../outside/secret.jpg", "caption": "climbs out after a detour"},
             {"image": "link_in.jpg", "caption": "link inside"}]
    vg = [{"id": "../outside/secret", "regions": [{"phrase": "vg climbs out", "x": 1, "y": 1, "width": 5, "height": 5}]}]
    coco = {"images": [{"id": 1, "file_name": "../outside/secret.jpg"}], "annotations": [{"image_id": 1, "caption": "coco climbs out"}]}
    (tmp_path / "vg.json").write_text(json.dumps(vg))
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    out = tmp_path / "out"
    assert build(out, [("jsonl", write_jsonl(tmp_path / "a.jsonl", lines)), ("vg-regions", tmp_path / "vg.json"),
                       ("coco-captions", tmp_path / "coco.json")], media, "--prefix", "p") == 0

    samples = read_back(out)
    assert [(s["__key__"], s["json"]["captions"]) for s in samples] == [("p_1", ["inside"]), ("p_link_in", ["link inside"])]
    assert samples[1]["jpg"] == (media / "3.jpg").read_bytes()
    secret_bytes = secret.read_bytes()
    assert all(secret_bytes not in tar.read_bytes() for tar in out.glob("*.tar"))
    real_secret = os.path.realpath(secret)
    # ../outside/secret.jpg is named three times; the readers' records merge into one sample.
    assert reasons(out) == [
        ("sample", "media path leaves --media-root: ../outside/secret.jpg"),
        ("sample", f"media path leaves --media-root: {secret} is absolute"),
        ("sample", f"media path leaves --media-root through a symbolic link: link_out.jpg resolves to {real_secret}"),
        ("sample", f"media path leaves --media-root through a symbolic link: dir_out/secret.jpg resolves to {real_secret}"),
    ]
    assert [r["origin"] for r in strict_rejected(out)][0] == f"{tmp_path / 'a.jsonl'}:2"


def test_a_media_file_above_the_loaders_cap_is_rejected_unread(media, tmp_path):
    from data_pipeline.io.tar_stream import DEFAULT_MAX_MEMBER_BYTES

    with open(media / "huge.jpg", "wb") as file:
        file.truncate(40 * 2**30)  # sparse: 40 GB that take no disk, and would take the memory
    out = tmp_path / "out"
    lines = [{"image": "1.jpg", "caption": "kept"}, {"image": "huge.jpg", "caption": "too large"}]
    assert build(out, [("jsonl", write_jsonl(tmp_path / "a.jsonl", lines))], media, "--prefix", "p") == 0
    assert [s["__key__"] for s in read_back(out)] == ["p_1"]
    assert reasons(out) == [("sample", f"file of {40 * 2**30} bytes, above the loader's member cap "
                                       f"({DEFAULT_MAX_MEMBER_BYTES})")]


# JSON lines ----------------------------------------------------------------------------

def test_malformed_json_lines_become_rejections_and_the_good_samples_are_kept(media, tmp_path):
    deep = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError on it
    lines = [{"image": "1.jpg", "caption": "good"},
             deep,
             '{"image": "2.jpg", "caption": "x", "n": ' + "9" * 5000 + "}",  # int() refuses more than 4300 digits
             [1, 2],
             {"image": ["2.jpg"], "caption": "a list for a path"},
             {"image": 3, "caption": "a number for a path"},
             {"image": "2.jpg", "captions": 7},
             {"image": "2.jpg", "captions": ["two", 3]},
             {"image": "3.jpg", "captions": ["three"], "regions": "ignored"}]
    out = tmp_path / "out"
    assert build(out, [("jsonl", write_jsonl(tmp_path / "a.jsonl", lines))], media, "--prefix", "p") == 0
    assert [(s["__key__"], s["json"]["captions"]) for s in read_back(out)] == [("p_1", ["good"]), ("p_3", ["three"])]
    no_captions = "no captions (a string or list of strings under one of captions, caption, text, title)"
    assert reasons(out) == [
        ("record", "line is not valid JSON (nested too deeply)"),
        ("record", "line is not valid JSON (Exceeds the limit (4300 digits) for integer string conversion: "
                   "value has 5000 digits; use sys.set_int_max_str_digits() to increase the limit)"),
        ("record", "line is not a JSON object"),
        ("record", "no image path (one of the keys image, path, file_name, filename, filepath)"),
        ("record", "no image path (one of the keys image, path, file_name, filename, filepath)"),
        ("record", no_captions),
        ("record", no_captions),
    ]


# COCO ----------------------------------------------------------------------------------

def test_coco_ids_and_fields_of_the_wrong_type_are_rejected(demo_corpus, media, tmp_path):
    width, height = image_size(demo_corpus, 1)
    images = [{"id": 1, "file_name": "1.jpg", "width": width, "height": height},
              {"id": [2], "file_name": "2.jpg"},
              {"id": {"a": 2}, "file_name": "2.jpg"},
              {"id": NAN, "file_name": "2.jpg"},
              {"id": True, "file_name": "2.jpg"},
              {"id": 2.0, "file_name": "2.jpg"},
              "not an object",
              {"id": 3, "file_name": ["3.jpg"]},
              {"id": 4, "file_name": "3.jpg", "width": "640", "height": 480},
              {"id": 5, "file_name": "3.jpg", "width": 10 ** 30, "height": 480},
              {"id": 1, "file_name": "2.jpg"},
              {"id": 6, "file_name": "2.jpg"}]
    annotations = [{"image_id": 1, "caption": "good"},
                   {"image_id": [1], "caption": "a list id"},
                   {"image_id": True, "caption": "true is not image 1"},
                   {"image_id": 1.0, "caption": "nor is 1.0"},
                   {"image_id": NAN, "caption": "nan"},
                   {"image_id": 4, "caption": "points at a rejected image"},
                   {"image_id": 99, "caption": "points at nothing"},
                   {"image_id": 1, "caption": 12},
                   ["not", "an", "object"],
                   {"image_id": 6, "caption": "two kept"}]
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))  # NaN written as the NaN literal
    out = tmp_path / "out"
    assert build(out, [("coco-captions", path)], media, "--prefix", "c") == 0
    assert [(s["__key__"], s["json"]["captions"]) for s in read_back(out)] == [("c_1", ["good"]), ("c_2", ["two kept"])]
    no_id = "image entry has no usable 'id' (an integer or a string): "
    assert reasons(out) == [
        ("record", no_id + "[2]"), ("record", no_id + "{'a': 2}"), ("record", no_id + "nan"), ("record", no_id + "True"),
        ("record", no_id + "2.0"),
        ("record", "image entry is not a JSON object: 'not an object'"),
        ("record", "image entry has no 'file_name' string: ['3.jpg']"),
        ("record", "image entry has malformed width / height '640' / 480: expected positive integers"),
        ("record", "image entry has malformed width / height 1000000000000000000000000000000 / 480: expected positive integers"),
        ("record", "duplicate image id 1"),
        ("record", f"annotation points at image_id [1], which {path} does not list"),
        ("record", f"annotation points at image_id True, which {path} does not list"),
        ("record", f"annotation points at image_id 1.0, which {path} does not list"),
        ("record", f"annotation points at image_id nan, which {path} does not list"),
        ("record", f"annotation points at image_id 4, whose entry in {path} is rejected"),
        ("record", f"annotation points at image_id 99, which {path} does not list"),
        ("record", "annotation has no 'caption' string: 12"),
        ("record", "annotation is not a JSON object: ['not', 'an', 'object']"),
    ]


def test_coco_instances_bad_categories_and_boxes_are_rejected_one_by_one(media, tmp_path):
    categories = [{"id": 1, "name": "cat"}, {"id": [2], "name": "list id"}, {"id": 3, "name": 3}, "junk"]
    annotations = [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 20]},
                   {"image_id": 1, "category_id": [1], "bbox": [1, 2, 10, 20]},
                   {"image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 20]},
                   {"image_id": 1, "category_id": 1, "bbox": ["1", "2", "10", "20"]},
                   {"image_id": 1, "category_id": 1, "bbox": [NAN, 2, 10, 20]},
                   {"image_id": 1, "category_id": 1, "bbox": [0.5, 2, 10 ** 400, 20]},
                   {"image_id": 1, "category_id": 1, "bbox": {"x": 1}},
                   {"image_id": 1, "category_id": 1}]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "1.jpg"}], "annotations": annotations,
                                "categories": categories}))
    out = tmp_path / "out"
    assert build(out, [("coco-instances", path)], media, "--prefix", "i") == 0
    [sample] = read_back(out)
    assert sample["json"]["regions"] == [{"box": [1, 2, 10, 20], "captions": [], "label": "cat"}]
    bad_category = "category entry is not an object with an 'id' and a 'name' string: "
    assert reasons(out) == [
        ("record", bad_category + "{'id': [2], 'name': 'list id'}"),
        ("record", bad_category + "{'id': 3, 'name': 3}"),
        ("record", bad_category + "'junk'"),
        ("record", "annotation has unknown category_id [1]"),
        ("record", "annotation has unknown category_id 3"),
        ("region", "malformed box ['1', '2', '10', '20']: expected [x, y, w, h] finite numbers"),
        ("region", "malformed box [nan, 2, 10, 20]: expected [x, y, w, h] finite numbers"),
        ("region", "malformed box [0.5, 2, <an integer of 1329 bits>, 20]: expected [x, y, w, h] finite numbers"),
        ("region", "malformed box {'x': 1}: expected [x, y, w, h] finite numbers"),
        ("region", "malformed box None: expected [x, y, w, h] finite numbers"),
    ]
    values = [r.get("value") for r in strict_rejected(out) if r["item"] == "region"]
    assert values[:2] == [["1", "2", "10", "20"], "[nan, 2, 10, 20]"]  # NaN kept as text: the file stays strict JSON


# Visual Genome -------------------------------------------------------------------------

def test_vg_entries_and_regions_of_the_wrong_shape_are_rejected(media, tmp_path):
    good = {"phrase": "a box", "x": 1, "y": 2, "width": 10, "height": 20}
    entries = [{"id": 1, "regions": [good, "junk", {"phrase": 5}, {**good, "x": "1"}, {**good, "width": True}]},
               "junk",
               {"id": [2], "regions": [good]},
               {"id": True, "regions": [good]},
               {"id": NAN, "regions": [good]},
               {"regions": [good]},
               {"id": 2, "regions": {"0": good}},
               {"id": 3, "regions": [good]}]
    path = tmp_path / "vg.json"
    path.write_text(json.dumps(entries))
    out = tmp_path / "out"
    assert build(out, [("vg-regions", path)], media, "--prefix", "v") == 0
    box = {"box": [1, 2, 10, 20], "captions": ["a box"], "label": None}
    assert [(s["__key__"], s["json"]["regions"]) for s in read_back(out)] == [("v_1", [box]), ("v_3", [box])]
    assert reasons(out) == [
        ("region", "region has no 'phrase' string"),
        ("region", "region has no 'phrase' string"),
        ("record", "entry is not a JSON object: 'junk'"),
        ("record", "entry has no usable image 'id' (an integer or a string): [2]"),
        ("record", "entry has no usable image 'id' (an integer or a string): True"),
        ("record", "entry has no usable image 'id' (an integer or a string): nan"),
        ("record", "entry has no usable image 'id' (an integer or a string): None"),
        ("record", "entry's 'regions' is not a list: {'0': {'height': 20, 'phrase': 'a box', 'width': 10, 'x': 1, ...}}"),
        ("region", "malformed box ['1', 2, 10, 20]: expected [x, y, w, h] finite numbers"),
        ("region", "malformed box [1, 2, True, 20]: expected [x, y, w, h] finite numbers"),
    ]


# CSV -----------------------------------------------------------------------------------

def test_a_csv_row_the_reader_cannot_parse_is_rejected_alone(media, tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("image,caption\n1.jpg,one\n2.jpg," + "x" * 200_000 + "\n3.jpg,three\n,no image\n")
    out = tmp_path / "out"
    assert build(out, [("csv", path)], media, "--prefix", "t") == 0
    assert [(s["__key__"], s["json"]["captions"]) for s in read_back(out)] == [("t_1", ["one"]), ("t_3", ["three"])]
    rejected = strict_rejected(out)
    assert [(r["reason"], r["origin"]) for r in rejected] == [
        ("row is not readable csv (field larger than field limit (131072))", f"{path}:3"),
        ("empty image column", f"{path}:5")]


# Video clip times ----------------------------------------------------------------------

def test_clip_times_that_are_not_finite_negative_inverted_or_too_long_are_rejected(demo_corpus, tmp_path):
    line = json.loads((demo_corpus / "annotations/videos_train.jsonl").read_text().splitlines()[0])
    duration = line["duration"]
    clips = [(0.5, duration - 0.5), (NAN, 1.0), (0.0, float("inf")), (-1.0, 1.0), (None, -2.0), (1.0, 0.5),
             (1.0, 1.0), (0.0, duration + 1.0), (duration + 1.0, None), ("0.5", 1.0), (True, 1.0), (0.0, 10 ** 400)]
    media = tmp_path / "videos"
    media.mkdir()
    lines = []
    for index, (start, end) in enumerate(clips):
        shutil.copy(demo_corpus / "videos" / line["video"], media / f"{index}.mp4")  # one sample per clip
        entry = {"video": f"{index}.mp4", "captions": ["a clip"]}
        entry.update({k: v for k, v in (("start", start), ("end", end)) if v is not None})
        lines.append(entry)
    out = tmp_path / "out"
    assert build(out, [("video-jsonl", write_jsonl(tmp_path / "v.jsonl", lines))], media, "--prefix", "v") == 0
    assert [(s["__key__"], s["json"]["start"], s["json"]["end"]) for s in read_back(out)] == [("v_0", 0.5, duration - 0.5)]
    inside = f"does not lie inside the {duration} s video"
    assert sorted((int(r["media"][:-4]), r["item"], r["reason"]) for r in strict_rejected(out)) == [
        (1, "record", "clip start is not a finite number of seconds: nan"),
        (2, "record", "clip end is not a finite number of seconds: inf"),
        (3, "record", "clip start is negative: -1.0"),
        (4, "record", "clip end is negative: -2.0"),
        (5, "record", "clip end 0.5 is not after its start 1.0"),
        (6, "record", "clip end 1.0 is not after its start 1.0"),
        (7, "sample", f"clip start=0.0 end={duration + 1.0} {inside}"),
        (8, "sample", f"clip start={duration + 1.0} end=None {inside}"),
        (9, "record", "clip start must be a number of seconds, got '0.5'"),
        (10, "record", "clip start must be a number of seconds, got True"),
        (11, "sample", f"clip start=0.0 end=<an integer of 1329 bits> {inside}"),
    ]


# RefCOCO refs pickles ------------------------------------------------------------------

@pytest.fixture
def refcoco_dir(demo_corpus, media, tmp_path) -> Path:
    """A refs directory whose instances.json lists media/1.jpg and 2.jpg, one box each."""
    folder = tmp_path / "refcoco"
    folder.mkdir()
    images = [{"id": n, "file_name": f"{n}.jpg", "width": image_size(demo_corpus, n)[0],
               "height": image_size(demo_corpus, n)[1]} for n in (1, 2)]
    (folder / "instances.json").write_text(json.dumps({
        "images": images, "categories": [{"id": 1, "name": "shape"}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 20]},
                        {"id": 20, "image_id": 2, "category_id": 1, "bbox": [3, 4, 5, 6]}]}))
    return folder


class _RunsACommand:
    """What a malicious refs file holds: unpickling it calls os.system."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_a_refs_pickle_that_would_run_code_is_refused_and_runs_nothing(refcoco_dir, media, tmp_path, capsys, protocol):
    marker = tmp_path / "MARKER"
    refs = [{"ref_id": 1, "ann_id": 10, "image_id": 1, "split": "train", "sentences": [{"sent": "the box"}]},
            _RunsACommand(f"touch {shlex.quote(str(marker))}")]
    path = refcoco_dir / "refs(unc).p"
    path.write_bytes(pickle.dumps(refs, protocol=protocol))
    code = build(tmp_path / "out", [("refcoco", path)], media, "--prefix", "r")
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    assert err.strip() == (f"x2vlm-shards build: error: {path}: is refused: the pickle asks for the global "
                           f"{os.system.__module__}.system, which a refs file never holds (only lists, dicts, strings "
                           "and numbers); nothing in it was run")
    assert not list((tmp_path / "out").glob("*.tar"))


def python2_pickle(value) -> bytes:
    """`value` as Python 2's cPickle.dump writes it at protocol 0: str as byte strings (S),
    int (I), list ((l ... a) and dict ((d ... s); written by hand, not by Python 3's pickle."""
    def put(v) -> bytes:
        if isinstance(v, str):
            return b"S'" + v.encode("utf-8").decode("latin-1").encode("unicode_escape").replace(b"'", b"\\'") + b"'\n"
        if isinstance(v, int):
            return b"I%d\n" % v
        if isinstance(v, list):
            return b"(l" + b"".join(put(item) + b"a" for item in v)
        if isinstance(v, dict):
            return b"(d" + b"".join(put(k) + put(item) + b"s" for k, item in v.items())
        raise TypeError(v)
    return put(value) + b"."


def test_a_python2_refs_pickle_of_byte_strings_is_read_with_its_splits(refcoco_dir, media, tmp_path):
    refs = [{"ref_id": 1, "ann_id": 10, "image_id": 1, "category_id": 1, "split": "train",
             "sentences": [{"sent": "the café box", "raw": "The café box"}, {"raw": "raw only"}]},
            {"ref_id": 2, "ann_id": 20, "image_id": 2, "category_id": 1, "split": "val", "sentences": [{"sent": "held out"}]}]
    path = refcoco_dir / "refs(unc).p"
    path.write_bytes(python2_pickle(refs))
    assert isinstance(pickle.loads(path.read_bytes(), encoding="bytes")[0][b"split"], bytes)  # really byte strings
    out = tmp_path / "out"
    assert build(out, [("refcoco", path)], media, "--prefix", "r", "--refcoco-split", "train") == 0
    assert [(s["__key__"], s["json"]["regions"]) for s in read_back(out)] == [
        ("r_1", [{"box": [1, 2, 10, 20], "captions": ["the café box", "raw only"], "label": "shape"}])]


def test_malformed_refs_are_rejected_one_by_one(refcoco_dir, media, tmp_path):
    good = {"ref_id": 1, "ann_id": 10, "image_id": 1, "category_id": 1, "split": "train", "sentences": [{"sent": "kept"}]}
    refs = [good, "junk", {**good, "ref_id": 2, "ann_id": [10]}, {**good, "ref_id": 3, "image_id": [1]},
            {**good, "ref_id": 4, "sentences": 5}, {**good, "ref_id": 5, "category_id": 99, "sentences": [{"sent": 7}]},
            {**good, "ref_id": 6, "category_id": {"x": 1}, "ann_id": 20, "image_id": 2}]
    path = refcoco_dir / "refs(unc).p"
    path.write_bytes(pickle.dumps(refs, protocol=2))
    instances = refcoco_dir / "instances.json"
    out = tmp_path / "out"
    assert build(out, [("refcoco", path)], media, "--prefix", "r") == 0
    assert [(s["__key__"], [r["captions"] for r in s["json"]["regions"]]) for s in read_back(out)] == [
        ("r_1", [["kept"]]), ("r_2", [["kept"]])]  # ref 6: no label but a caption, so kept
    assert reasons(out) == [
        ("record", "ref is not a dict with an 'ann_id': 'junk'"),
        ("record", f"ref points at ann_id [10], which {instances} does not list"),
        ("record", f"ref points at image_id [1], which {instances} does not list"),
        ("record", "ref's 'sentences' is not a list: 5"),
        ("caption", "caption is not a string"),
        ("region", "region has no valid caption or label"),
    ]


def test_a_refs_pickle_that_repeats_shared_objects_beyond_its_size_is_refused(refcoco_dir, media, tmp_path, capsys):
    # Pickle memoizes shared objects: 2000 refs of 2000 sentences each fit in a few KiB.
    sentence = {"sent": "again"}
    ref = {"ref_id": 1, "ann_id": 10, "image_id": 1, "split": "train", "sentences": [sentence] * 2000}
    path = refcoco_dir / "refs(unc).p"
    path.write_bytes(pickle.dumps([ref] * 2000, protocol=2))
    assert path.stat().st_size < 20_000
    assert build(tmp_path / "out", [("refcoco", path)], media, "--prefix", "r") == 2
    assert capsys.readouterr().err.strip() == (f"x2vlm-shards build: error: {path}: is not a refcoco refs pickle: "
                                               "it repeats shared objects far beyond its size")


# Whole files that are not of their format ----------------------------------------------

@pytest.mark.parametrize("fmt, content, message", [
    ("coco-captions", "[" * 100_000 + "]" * 100_000, "is not valid JSON, so not a coco-captions file (nested too deeply)"),
    ("coco-captions", json.dumps({"images": ["a", 1], "annotations": []}),
     "is not a coco-captions file: no entry of 'images' is an object with 'id' and 'file_name'"),
    ("coco-instances", json.dumps({"images": [], "annotations": [], "categories": {"1": "cat"}}),
     "is not a COCO instances file: 'categories' is not a list but {'1': 'cat'}"),
    ("vg-regions", json.dumps(["a", 1, [2]]), 'is not a vg-regions file: expected a JSON list of {"id", "regions"} objects'),
    ("video-jsonl", "[1]\n" + "[" * 100_000 + "\n", "no line is a JSON object, so it is not a video-jsonl file"),
])
def test_a_file_that_is_not_of_its_format_exits_2_naming_it(media, tmp_path, capsys, fmt, content, message):
    path = tmp_path / "annotations.json"
    path.write_text(content)
    assert build(tmp_path / "out", [(fmt, path)], media) == 2
    assert capsys.readouterr().err.strip() == f"x2vlm-shards build: error: {path}: {message}"


@pytest.mark.parametrize("content, message", [
    (b"not a pickle at all", "is not a refcoco refs pickle (unknown opcode b'n')"),
    (pickle.dumps([{"ann_id": 1}], protocol=2)[:-5], "is not a refcoco refs pickle (the file ends before the pickle does)"),
    (pickle.dumps({"ann_id": 1}, protocol=2), "is not a refcoco refs pickle: expected a list of refs (dicts with 'ann_id')"),
])
def test_a_refs_file_that_is_not_a_refs_pickle_exits_2_naming_it(refcoco_dir, media, tmp_path, capsys, content, message):
    path = refcoco_dir / "refs(unc).p"
    path.write_bytes(content)
    assert build(tmp_path / "out", [("refcoco", path)], media) == 2
    assert capsys.readouterr().err.strip().startswith(f"x2vlm-shards build: error: {path}: {message}")


def test_a_memo_index_far_beyond_the_file_allocates_nothing(refcoco_dir, media, tmp_path):
    # An empty list stored at memo index 2**32-1: the C unpickler would size its memo table
    # to 2**33 entries (64 GiB) for this ten-byte file; the refs reader reads an empty list.
    path = refcoco_dir / "refs(unc).p"
    path.write_bytes(b"\x80\x02]r\xff\xff\xff\xff.")
    out = tmp_path / "out"
    assert build(out, [("refcoco", path)], media, "--prefix", "r") == 0
    assert json.loads((out / "manifest.json").read_text())["totals"]["samples"] == 0
