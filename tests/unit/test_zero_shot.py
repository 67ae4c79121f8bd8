"""Zero-shot classification (training/evaluation/zero_shot_classification.py, x2vlm-zero-shot): hand-built
embeddings whose answers are known, ImageFolder trees and labelled shards written here, and
the command on a tiny model folder against the same computation done by hand."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from data_pipeline.skips import Counters
from pipeline_helpers import demo_tokenizer  # noqa: F401
from training.evaluation import zero_shot_classification as zero_shot
from training.evaluation.zero_shot_classification import (Classes, Tally, ZeroShotError, class_embeddings, classify, image_folder,
                                           labelled_shards, read_classes, read_templates)
from training.zero_shot import main
from training.inference import InputError, X2VLMPredictor
from training.model import create_model
from training.folders.model_folder import ModelCard, write_model_folder

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220)}
TEMPLATES = ["a photo of a {}.", "a {} shape"]


def png(colour: tuple[int, int, int], size=(20, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


class StandIn:
    """A model with hand-built embeddings: a text is the unit vector of the class name it holds
    (the same for every template), an image the unit vector of the class its colour is mapped
    to, so that an image's embedding is its class's text embedding exactly."""

    def __init__(self, names: list[str], image_class: dict[tuple[int, int, int], str] | None = None):
        self.names = names
        self.image_class = image_class or {COLOURS[name]: name for name in names}

    def _unit(self, name: str) -> torch.Tensor:
        return torch.eye(len(self.names) + 2)[self.names.index(name)]

    def embed_texts(self, texts):
        return torch.stack([self._unit(next(n for n in self.names if f" {n}" in f" {t}")) for t in texts])

    def embed_images(self, images):
        rows = []
        for image in images:
            data = image.read_bytes() if isinstance(image, Path) else image
            try:
                colour = Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0))
            except Exception as error:  # noqa: BLE001 - as X2VLMPredictor reports an image it cannot read
                raise InputError(f"not a readable image ({error})") from None
            rows.append(self._unit(self.image_class[colour]))
        return torch.stack(rows)


def write_tree(root: Path, counts: dict[str, int]) -> Path:
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            (root / name / f"{i}.png").write_bytes(png(COLOURS[name]))
    return root


def test_identical_embeddings_give_accuracy_one(tmp_path):
    classes, images = image_folder(write_tree(tmp_path / "tree", {"blue": 2, "green": 3, "red": 1}))
    assert classes.names == ["blue", "green", "red"]
    result = classify(StandIn(classes.names), images, classes, TEMPLATES, batch_size=4)
    figures = result.as_dict()
    assert figures["top1"] == 1.0 and figures["images"] == 6 and "top5" not in figures  # 3 classes: no top-5
    assert [(c["class"], c["images"], c["top1"]) for c in figures["per_class"]] == [
        ("blue", 2, 1.0), ("green", 3, 1.0), ("red", 1, 1.0)]
    # The same images seen as another class's: those are wrong, and only those.
    confused = StandIn(classes.names, {COLOURS["blue"]: "blue", COLOURS["green"]: "red", COLOURS["red"]: "red"})
    figures = classify(confused, images, classes, TEMPLATES, batch_size=4).as_dict()
    assert figures["top1"] == pytest.approx(3 / 6)
    assert [c["top1"] for c in figures["per_class"]] == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("prompts_per_call", [1024, 2])  # both classes' prompts in one call, or one class each
def test_class_embedding_is_the_normalised_mean_of_normalised_prompts(prompts_per_call, monkeypatch):
    monkeypatch.setattr(zero_shot, "PROMPTS_PER_CALL", prompts_per_call)
    prompts = {"a cat": [3.0, 0.0, 4.0], "the cat": [0.0, 2.0, 0.0], "a dog": [1.0, 1.0, 0.0], "the dog": [0.0, 0.0, 5.0]}

    class Texts:
        def embed_texts(self, texts):
            return torch.tensor([prompts[t] for t in texts])

    got = class_embeddings(Texts(), ["cat", "dog"], ["a {}", "the {}"])
    cat = np.array([0.6, 0.0, 0.8]) / 2 + np.array([0.0, 1.0, 0.0]) / 2
    dog = np.array([1.0, 1.0, 0.0]) / np.sqrt(2) / 2 + np.array([0.0, 0.0, 1.0]) / 2
    expected = np.stack([cat / np.linalg.norm(cat), dog / np.linalg.norm(dog)])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


def test_top_k_accuracy_equals_a_stable_sort():
    generator = torch.Generator().manual_seed(0)
    # Values on a coarse grid, so that many classes tie with the true one.
    similarities = torch.randint(0, 4, (200, 7), generator=generator).float()
    labels = torch.randint(0, 7, (200,), generator=generator)
    tally = Tally(7, (1, 5))
    tally.add(similarities[:120], labels[:120])
    tally.add(similarities[120:], labels[120:])
    order = np.argsort(-similarities.numpy(), axis=1, kind="stable")
    place = np.argmax(order == labels.numpy()[:, None], axis=1)
    assert tally.accuracy(1) == pytest.approx(np.mean(place < 1))
    assert tally.accuracy(5) == pytest.approx(np.mean(place < 5))
    assert tally.accuracy(1) == pytest.approx(np.mean(np.argmax(similarities.numpy(), axis=1) == labels.numpy()))
    # A model whose classes all look alike is right only for the first class.
    alike = Tally(7, (1,))
    alike.add(torch.zeros(200, 7), labels)
    assert alike.accuracy(1) == pytest.approx(np.mean(labels.numpy() == 0))


def test_classes_and_templates_files(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("# ImageNet order\ngoldfish\n\ngreat white shark\n", encoding="utf-8")
    assert read_classes(plain).names == ["goldfish", "great white shark"]
    keyed = tmp_path / "keyed.txt"
    keyed.write_text("n01443537\tgoldfish\nn01491361\tgreat white shark\n", encoding="utf-8")
    classes = read_classes(keyed)
    assert classes.names == ["goldfish", "great white shark"]
    assert [classes.index(label, "x") for label in ("n01491361", "1", 0, "goldfish")] == [1, 1, 0, 0]
    for bad, message in [("a\nb\tc\n", "mixes"), ("a\na\n", "repeats line 1"), ("", "no classes")]:
        path = tmp_path / "bad.txt"
        path.write_text(bad, encoding="utf-8")
        with pytest.raises(ZeroShotError, match=message):
            read_classes(path)
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}.\nitap of a {}.\n", encoding="utf-8")
    assert read_templates(templates) == ["a photo of a {}.", "itap of a {}."]
    templates.write_text("a photo of a {}.\na photo of {c}.\n", encoding="utf-8")
    with pytest.raises(ZeroShotError, match=r"'a photo of \{c\}\.'"):
        read_templates(templates)


def test_image_folder_with_a_classes_file_and_its_mistakes(tmp_path):
    tree = tmp_path / "tree"
    for wnid, colour in [("n02", "green"), ("n01", "red")]:
        (tree / wnid).mkdir(parents=True)
        (tree / wnid / "a.png").write_bytes(png(COLOURS[colour]))
    # A plain list as long as the folders names them in sorted order, as torchvision numbers them.
    classes, images = image_folder(tree, Classes(["red", "green"]))
    assert [(image.where.split("/")[-2], image.label) for image in images] == [("n01", 0), ("n02", 1)]
    # Folders that name the classes are theirs, underscores read as spaces, whatever the order.
    named = tmp_path / "named"
    for folder in ("white_shark", "goldfish"):
        (named / folder).mkdir(parents=True)
        (named / folder / "a.png").write_bytes(png(COLOURS["red"]))
    _, images = image_folder(named, Classes(["white shark", "goldfish"]))
    assert [(image.where.split("/")[-2], image.label) for image in images] == [("goldfish", 1), ("white_shark", 0)]
    with pytest.raises(ZeroShotError, match=r"n02.*unknown label 'n02'"):
        image_folder(tree, Classes(["red", "green", "blue"], {"n01": 0}))
    (tree / "n03").mkdir()
    (tree / "n03" / "notes.txt").write_text("no image here")
    with pytest.raises(ZeroShotError, match=r"n03: empty class folder"):
        image_folder(tree)
    with pytest.raises(ZeroShotError, match="not a directory"):
        image_folder(tmp_path / "missing")


def write_labelled_shards(out: Path) -> list[str]:
    """Two shards as img2dataset / webdataset write ImageNet: a `cls` member; a label in the json."""
    out.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(out / "cls-000000.tar")) as writer:
        writer.write({"__key__": "000000000", "png": png(COLOURS["red"]), "cls": b"0", "json": b'{"key": "0"}'})
        writer.write({"__key__": "000000001", "png": png(COLOURS["blue"]), "cls": b"2"})
        writer.write({"__key__": "000000002", "png": b"\x89PNG not really", "cls": b"1"})  # does not decode
        writer.write({"__key__": "000000003", "json": b'{"label": 1}', "cls": b"1"})  # no image
    with wds.TarWriter(str(out / "json-000000.tar")) as writer:
        for key, name in [("a", "green"), ("b", "blue")]:
            writer.write({"__key__": key, "jpg": png(COLOURS[name]), "json": json.dumps({"meta": {"label": name}}).encode()})
    return [str(out / "cls-000000.tar"), str(out / "json-000000.tar")]


def test_shards_with_a_label_member_or_json_field(tmp_path):
    cls_shard, json_shard = write_labelled_shards(tmp_path / "shards")
    classes = Classes(["red", "green", "blue"])
    counters = Counters()
    images = list(labelled_shards([cls_shard], classes, "cls", counters))
    assert [(image.where.rsplit(" ", 1)[1], image.label) for image in images] == [
        ("'000000000'", 0), ("'000000001'", 2), ("'000000002'", 1)]
    assert counters.as_dict() == {"missing_media": 1}
    images = list(labelled_shards([json_shard], classes, "meta.label", counters))
    assert [image.label for image in images] == [1, 2]
    # Classified with embeddings equal to the classes': every image that decodes is right.
    counters = Counters()
    images = list(labelled_shards([cls_shard], classes, "cls", counters)) + \
        list(labelled_shards([json_shard], classes, "meta.label", counters))
    result = classify(StandIn(classes.names), images, classes, TEMPLATES, batch_size=2, counters=counters)
    assert result.as_dict()["top1"] == 1.0 and result.images == 4
    assert result.skipped == {"image_decode": 1, "missing_media": 1}


def test_shard_labels_that_name_no_class_are_refused(tmp_path):
    cls_shard, json_shard = write_labelled_shards(tmp_path / "shards")
    with pytest.raises(ZeroShotError, match=r"cls-000000.tar: sample '000000001': unknown label '2'"):
        list(labelled_shards([cls_shard], Classes(["red", "green"]), "cls", Counters()))
    with pytest.raises(ZeroShotError, match=r"json-000000.tar: sample 'a': no label.*'cls'"):
        list(labelled_shards([json_shard], Classes(["red", "green", "blue"]), "cls", Counters()))


# The command, on a tiny model --------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(demo_tokenizer, tmp_path_factory) -> Path:
    torch.manual_seed(5)
    model = create_model("tiny", load_pretrained=False)
    card = ModelCard(source={"kind": "test"}, data={"corpora": [], "text": {"max_tokens": 16, "max_words": 16}})
    return write_model_folder(tmp_path_factory.mktemp("model") / "export", dict(model.named_parameters()),
                              model.config, demo_tokenizer, card)


def test_command_equals_the_computation_by_hand(folder, tmp_path, capsys):
    tree = write_tree(tmp_path / "tree", {"blue": 2, "green": 2, "red": 3})
    (tree / "red" / "broken.png").write_bytes(b"\x89PNG not really")
    templates = tmp_path / "templates.txt"
    templates.write_text("a {} circle\na single {} square on a gray background\n", encoding="utf-8")
    out = tmp_path / "zero_shot.json"
    assert main([str(folder), "--images", str(tree), "--templates", str(templates), "--batch-size", "3",
                 "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    figures = json.loads(out.read_text())
    assert "7 images, 3 classes: top-1" in capsys.readouterr().out
    assert figures["skipped"] == {"image_decode": 1} and figures["images"] == 7

    predictor = X2VLMPredictor(folder, device="cpu")
    names = ["blue", "green", "red"]
    prompts = predictor.embed_texts([t.format(n) for n in names for t in ["a {} circle", "a single {} square on a gray background"]])
    weights = torch.nn.functional.normalize(prompts.view(3, 2, -1).mean(1), dim=-1)
    files = [path for name in names for path in sorted((tree / name).glob("[0-9].png"))]
    labels = np.array([names.index(path.parent.name) for path in files])
    predicted = (predictor.embed_images(files) @ weights.T).argmax(1).numpy()
    assert figures["top1"] == pytest.approx(np.mean(predicted == labels))
    assert [c["top1"] for c in figures["per_class"]] == pytest.approx(
        [np.mean(predicted[labels == i] == i) for i in range(3)])


def test_command_on_shards_and_its_errors(folder, tmp_path, capsys):
    cls_shard, _ = write_labelled_shards(tmp_path / "shards")
    classes = tmp_path / "classes.txt"
    classes.write_text("red\ngreen\nblue\n", encoding="utf-8")
    assert main([str(folder), "--shards", cls_shard, "--classes", str(classes), "--device", "cpu", "--no-progress"]) == 0
    assert "2 images, 3 classes" in capsys.readouterr().out  # one image does not decode, one sample has none

    good_tree = write_tree(tmp_path / "good", {"red": 1})
    empty_tree = write_tree(tmp_path / "tree", {"red": 1, "green": 0})
    two_classes = tmp_path / "two.txt"
    two_classes.write_text("red\ngreen\n", encoding="utf-8")
    bad_template = tmp_path / "templates.txt"
    bad_template.write_text("a photo of a red\n", encoding="utf-8")
    for argv, named in [
        ([str(tmp_path / "nowhere"), "--images", str(good_tree)], "nowhere: not a directory"),
        ([str(folder), "--images", str(empty_tree)], "green: empty class folder"),
        ([str(folder), "--shards", cls_shard, "--classes", str(two_classes)], "sample '000000001': unknown label '2'"),
        ([str(folder), "--shards", str(tmp_path / "none-*.tar"), "--classes", str(classes)], "none-*.tar"),
        ([str(folder), "--images", str(empty_tree), "--templates", str(bad_template)], "'a photo of a red'"),
    ]:
        assert main(argv + ["--device", "cpu", "--no-progress"]) == 2, argv
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("x2vlm-zero-shot: ") and named in error[0], error


def test_command_help():
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    with pytest.raises(SystemExit) as exit_:
        main(["model", "--shards", "x.tar"])  # labels need the classes they stand for
    assert exit_.value.code == 2
