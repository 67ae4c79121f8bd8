"""The model folder: written once, read by every command; it still loads after a move, and
what does not fit is refused with a message naming the path."""
from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch
from transformers import AutoTokenizer

from pipeline_helpers import demo_tokenizer  # noqa: F401
from training.model import create_model
from training.folders.model_folder import (CARD_FILE, CONFIG_FILE, README_FILE, TOKENIZER_DIR, WEIGHTS_FILE, ModelCard,
                                   ModelFolderError, load_model_folder, write_model_folder)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(11)
    return create_model("tiny", load_pretrained=False)


def _write(model, out, tokenizer, **card):
    card = ModelCard(**{"source": {"kind": "test", "path": "/somewhere/step_00000010"}, **card})
    return write_model_folder(out, dict(model.named_parameters()), model.config, tokenizer, card)


def test_a_folder_moved_to_another_directory_loads_the_same_model_and_tokenizer(tiny, demo_tokenizer, tmp_path):
    written = _write(tiny, tmp_path / "a" / "export", demo_tokenizer, steps=10,
                     metrics={"image/img_r1": 0.25}, data={"corpora": [{"name": "coco", "kind": "image_text"}]})
    assert sorted(p.name for p in written.iterdir()) == sorted([WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_DIR, CARD_FILE,
                                                                README_FILE])
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(str(written), str(moved))
    shutil.rmtree(tmp_path / "a")  # nothing of the old place is left to lean on

    folder = load_model_folder(moved)
    assert folder.tokenizer == (moved / TOKENIZER_DIR).resolve()
    expected, loaded = tiny.state_dict(), folder.model.state_dict()
    assert list(loaded) == list(expected)
    for name, value in expected.items():
        assert torch.equal(loaded[name], value), name
    # The decoder is still the word embedding matrix, not a copy.
    assert folder.model.mlm_head.decoder.weight is folder.model.text.embeddings.word_embeddings.weight
    assert not folder.model.training and next(folder.model.parameters()).dtype == torch.float32
    caption = "a large red circle to the left of two small blue squares"
    assert (AutoTokenizer.from_pretrained(str(folder.tokenizer))(caption)["input_ids"]
            == AutoTokenizer.from_pretrained(str(demo_tokenizer))(caption)["input_ids"])
    assert (folder.card.steps, folder.card.metrics, folder.card.source["kind"]) == (10, {"image/img_r1": 0.25}, "test")
    card = json.loads((moved / CARD_FILE).read_text())
    assert card["format"] == "x2vlm-model-folder" and card["project_version"] and card["created"]
    assert "coco (image_text)" in (moved / README_FILE).read_text()


def test_the_config_is_complete_and_names_no_file_outside_the_folder(tiny, demo_tokenizer, tmp_path):
    import dataclasses

    config = dataclasses.replace(tiny.config, init_from="/runs/a/export",
                                 vision=dataclasses.replace(tiny.config.vision, pretrained="/models/beit.pth"))
    write_model_folder(tmp_path / "f", dict(tiny.named_parameters()), config, demo_tokenizer, ModelCard(source={}))
    text = (tmp_path / "f" / CONFIG_FILE).read_text()
    assert "/runs/a/export" not in text and "/models/beit.pth" not in text
    assert "temperature_max: 0.5" in text  # a default, written out
    assert load_model_folder(tmp_path / "f").config.text == tiny.config.text


def test_a_folder_is_written_whole_or_not_at_all(tiny, demo_tokenizer, tmp_path):
    out = _write(tiny, tmp_path / "f", demo_tokenizer)
    before = (out / WEIGHTS_FILE).read_bytes()
    weights = dict(tiny.named_parameters())
    del weights["itm_head.0.weight"]
    with pytest.raises(ModelFolderError, match=r"the weights do not fit the model config: missing \['itm_head.0.weight'\]"):
        write_model_folder(out, weights, tiny.config, demo_tokenizer, ModelCard(source={}))
    weights = {**dict(tiny.named_parameters()), "itm_head.0.weight": torch.zeros(3, 3)}
    with pytest.raises(ModelFolderError, match=r"itm_head.0.weight: shape \(3, 3\) in the weights, \(64, 32\) in the model"):
        write_model_folder(out, weights, tiny.config, demo_tokenizer, ModelCard(source={}))
    assert (out / WEIGHTS_FILE).read_bytes() == before  # the folder written before is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # and nothing half-written beside it

    with pytest.raises(ModelFolderError, match="tokenizer .*nowhere: not a directory"):
        _write(tiny, tmp_path / "g", tmp_path / "nowhere")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(ModelFolderError, match="notes: exists and is not a model folder"):
        _write(tiny, tmp_path / "notes", demo_tokenizer)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tiny, demo_tokenizer, tmp_path):
    import dataclasses

    small = create_model(dataclasses.replace(tiny.config, text=dataclasses.replace(tiny.config.text, vocab_size=50)),
                         load_pretrained=False)
    tokens = len(AutoTokenizer.from_pretrained(str(demo_tokenizer)))
    with pytest.raises(ModelFolderError, match=f"the tokenizer has {tokens} tokens but the model's text.vocab_size is 50"):
        _write(small, tmp_path / "f", demo_tokenizer)


def test_reading_refuses_what_is_not_a_whole_model_folder(tiny, demo_tokenizer, tmp_path):
    out = _write(tiny, tmp_path / "f", demo_tokenizer)
    with pytest.raises(ModelFolderError, match="nowhere: not a directory"):
        load_model_folder(tmp_path / "nowhere")

    # An export of the earlier layout: weights and config only.
    old = tmp_path / "old"
    old.mkdir()
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        shutil.copy(out / name, old / name)
    with pytest.raises(ModelFolderError, match=f"an export of an earlier version .*x2vlm-export CHECKPOINT --out {old}"):
        load_model_folder(old)

    # A tokenizer that is a link out of the folder.
    linked = tmp_path / "linked"
    shutil.copytree(out, linked)
    shutil.rmtree(linked / TOKENIZER_DIR)
    (linked / TOKENIZER_DIR).symlink_to(demo_tokenizer, target_is_directory=True)
    with pytest.raises(ModelFolderError, match="tokenizer: leads outside the model folder"):
        load_model_folder(linked)
    # A file of the tokenizer that is a link out of the folder.
    shutil.rmtree(linked)
    shutil.copytree(out, linked)
    outside = tmp_path / "elsewhere.json"
    outside.write_text((linked / TOKENIZER_DIR / "tokenizer.json").read_text())
    (linked / TOKENIZER_DIR / "tokenizer.json").unlink()
    (linked / TOKENIZER_DIR / "tokenizer.json").symlink_to(outside)
    with pytest.raises(ModelFolderError, match=r"tokenizer/tokenizer\.json: leads outside the model folder"):
        load_model_folder(linked)

    # A card whose fields have the wrong types.
    card = json.loads((out / CARD_FILE).read_text())
    for number, (field, value, problem) in enumerate((
            ("metrics", [1, 2], "'metrics' must be an object or null, got list"),
            ("steps", "many", "'steps' must be a whole number or null, got str"),
            ("metrics", {"image/img_r1": "high"}, "metrics.image/img_r1: must be a number"))):
        mistyped = tmp_path / f"mistyped_{number}"
        shutil.copytree(out, mistyped)
        (mistyped / CARD_FILE).write_text(json.dumps({**card, field: value}))
        with pytest.raises(ModelFolderError, match=f"card.json: {problem}"):
            load_model_folder(mistyped)

    # A card of another format, and weights of another shape.
    (old / CARD_FILE).write_text(json.dumps({"format": "something-else"}))
    shutil.copytree(out / TOKENIZER_DIR, old / TOKENIZER_DIR)
    with pytest.raises(ModelFolderError, match="card.json: not a model card"):
        load_model_folder(old)
    shutil.copy(out / CARD_FILE, old / CARD_FILE)
    (old / CONFIG_FILE).write_text((old / CONFIG_FILE).read_text().replace("embed_dim: 16", "embed_dim: 8"))
    with pytest.raises(ModelFolderError, match=r"vision_proj.weight: shape \(16, 32\) in the weights, \(8, 32\) in the model"):
        load_model_folder(old)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_file_is_as_readable_as_the_umask_allows(tiny, demo_tokenizer, tmp_path, umask):
    before = os.umask(umask)
    try:
        out = _write(tiny, tmp_path / "f", demo_tokenizer)
    finally:
        os.umask(before)
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert WEIGHTS_FILE in modes and set(modes.values()) == {0o666 & ~umask}, modes


def test_card_figures_have_plain_names_and_chance_and_no_machine_paths():
    from training.folders.card_contents import figures, machine_free

    metrics = {"demo_images_eval/img_r5": 0.123456, "demo_images_eval/txt_r1": 0.5, "demo_images_eval/images": 60,
               "demo_images_eval/eval_s": 2.5, "video/img_r1": 0.8333, "video/videos": 6,
               "region/grounding_acc": 0.3, "region/centre_baseline_acc": 0.0141,
               "region/region_text/txt_r1": 0.07, "region/region_text/txt_r1_chance": 0.00704,
               "caption_eval/cider": 1.23456, "caption_eval/constant_cider": 0.5, "caption_eval/captioned": 60}
    rows = {row["key"]: (row["name"], row["value"], row["chance"]) for row in figures(metrics)}
    assert rows == {
        "demo_images_eval/img_r5": ("text->image R@5", 0.1235, {"what": "random ranking", "value": round(5 / 60, 4)}),
        "demo_images_eval/txt_r1": ("image->text R@1", 0.5, None),
        "video/img_r1": ("text->video R@1", 0.8333, {"what": "random ranking", "value": 0.1667}),
        "region/grounding_acc": ("grounding accuracy (IoU >= 0.5)", 0.3, {"what": "a centre box", "value": 0.0141}),
        "region/region_text/txt_r1": ("region->region text R@1", 0.07, {"what": "random ranking", "value": 0.007}),
        "caption_eval/cider": ("captioning CIDEr-D", 1.2346,
                               {"what": "the set's most frequent caption for every image", "value": 0.5})}
    assert machine_free({"shards": ["/data/coco/coco-{0..9}.tar", "rel/x.tar"], "lr": 1e-4, "out": "/scratch/run"}) == \
        {"shards": ["coco-{0..9}.tar", "rel/x.tar"], "lr": 1e-4, "out": "run"}
