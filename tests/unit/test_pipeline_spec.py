"""The corpora YAML: validation with errors that name the key, and shard list expansion."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from data_pipeline.io.shard_list import expand_shards
from data_pipeline.config import ConfigError
from data_pipeline.spec import load_data_spec, parse_data_spec

REPO = Path(__file__).resolve().parents[2]


def minimal(**changes) -> dict:
    raw = {"text": {"tokenizer": "tok"},
           "corpora": [{"name": "cc3m", "kind": "image_text", "shards": "http://h/cc3m-{000..002}.tar"}]}
    raw.update(changes)
    return raw


def test_defaults_and_kind_options():
    spec = parse_data_spec(minimal())
    corpus = spec.corpora[0]
    assert (corpus.weight, corpus.batch_size) == (1.0, 32)
    assert dataclasses.asdict(corpus.options) == {"crop_scale": [0.2, 1.0], "flip": "swap", "rand_augment": True}
    assert (spec.image_res, spec.patch_size, spec.text.max_masks, spec.text.mask_prob) == (224, 16, 12, 0.5)
    assert spec.kind_ratio == {"image_text": 1.0, "region": 1.0, "video_text": 1.0}


@pytest.mark.parametrize("change, message", [
    ({"corpora": [{"name": "a", "kind": "images", "shards": "x"}]}, "corpora[0].kind: must be one of"),
    ({"corpora": [{"name": "a", "kind": "region", "shards": "x", "weight": 0}]}, "corpora[0].weight: must be in (0, 1e+06]"),
    ({"corpora": [{"name": "a", "kind": "region", "shards": "x", "batch_size": "8"}]}, "corpora[0].batch_size: expected int"),
    ({"corpora": [{"name": "a", "kind": "region", "shards": "x", "options": {"max_region": 3}}]},
     "corpora[0].options.max_region: unknown key"),
    ({"corpora": [{"name": "a", "kind": "image_text", "shards": "x", "options": {"flip": "maybe"}}]},
     "corpora[0].options.flip: must be one of swap, skip, off"),
    ({"corpora": [{"name": "a", "kind": "image_text", "shards": "x"}, {"name": "a", "kind": "region", "shards": "y"}]},
     "corpora[1].name: duplicate corpus name"),
    ({"corpora": [{"name": "a", "kind": "image_text"}]}, "corpora[0].shards: missing"),
    ({"text": {"tokenizer": "t", "mask_prob": 1.5}}, "text.mask_prob: must be in [0, 1]"),
    ({"patch_size": 15}, "patch_size: image_res 224 is not a multiple of patch_size 15"),
    ({"kinds": {"video_text": {"ratio": 0.5}}}, "kinds.video_text: no corpus of this kind"),
    ({"loader": {"num_workers": -1}}, "loader.num_workers: must be >= 0"),
    ({"seeds": 3}, "seeds: unknown key"),
])
def test_errors_name_the_key(change, message):
    with pytest.raises(ConfigError) as info:
        parse_data_spec(minimal(**change))
    assert str(info.value).startswith(message), str(info.value)


def test_yaml_root_anchors_relative_paths(tmp_path):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "data.yaml"
    path.write_text(yaml.safe_dump({"root": "..", **minimal(corpora=[
        {"name": "a", "kind": "image_text", "shards": ["s/a-{0..1}.tar", "pipe:cat x.tar", "/abs/b.tar"]}])}))
    spec = load_data_spec(path)
    assert spec.corpora[0].shards == [str(tmp_path / "conf" / ".." / "s/a-{0..1}.tar"), "pipe:cat x.tar", "/abs/b.tar"]
    assert spec.text.tokenizer == str(tmp_path / "conf" / ".." / "tok")
    bad = tmp_path / "bad.yaml"
    bad.write_text("corpora: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_data_spec(bad)


def test_demo_config_is_valid():
    spec = load_data_spec(REPO / "configs" / "data" / "demo.yaml")
    assert sorted(c.kind for c in spec.corpora) == ["image_text", "region", "region", "video_text"]


def test_expand_shards(tmp_path):
    for i in range(3):
        (tmp_path / f"a-{i:03d}.tar").write_bytes(b"")
    urls = expand_shards([str(tmp_path / "a-{000..002}.tar"), "http://host/b-{0..1}.tar", "pipe:cat c.tar"])
    assert urls == [str(tmp_path / f"a-{i:03d}.tar") for i in range(3)] + \
        ["http://host/b-0.tar", "http://host/b-1.tar", "pipe:cat c.tar"]
    assert expand_shards([str(tmp_path / "a-*.tar")]) == urls[:3]
    with pytest.raises(FileNotFoundError, match="a-003.tar' does not exist"):
        expand_shards([str(tmp_path / "a-{000..003}.tar")])
    with pytest.raises(ValueError, match="more than once"):
        expand_shards([str(tmp_path / "a-000.tar"), str(tmp_path / "a-{000..001}.tar")])
