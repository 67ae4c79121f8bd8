"""The model card of a fresh demo export (the session fixture `trained_demo`: the demo run,
2 ranks, exported at its end) read as a colleague would: what the model is, how it was trained,
its held-out figures with chance beside them, every command that takes the folder; and no
absolute path of the machine that wrote it, in card.json or README.md."""
from __future__ import annotations

import json
import re

from safetensors.torch import load_file

from engine_support import REPO_ROOT


def _strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def test_a_demo_exports_card_says_what_the_model_is_how_it_was_trained_and_how_to_use_it(trained_demo):
    folder = trained_demo.export
    card = json.loads((folder / "card.json").read_text())
    readme = (folder / "README.md").read_text()

    parameters = sum(tensor.numel() for tensor in load_file(str(folder / "model.safetensors")).values())
    model = card["model"]
    assert model["parameters"] == parameters
    assert (model["vision"]["image_size"], model["vision"]["patch_size"], model["vision"]["patch_grid"],
            model["vision"]["width"], model["vision"]["blocks"]) == (64, 8, "8x8", 64, 2)
    assert (model["text"]["text_layers"], model["text"]["fusion_layers"], model["text"]["width"]) == (2, 1, 128)
    assert f"{parameters / 1e6:.1f}M parameters" in model["summary"] and model["summary"] in readme

    training = card["training"]
    assert (training["steps"], training["world_size"], training["grad_accum"], training["lr"]) == (400, 2, 1, 0.001)
    assert training["global_batch"] == {"demo_images": 32, "demo_image_regions": 16, "demo_refcoco": 16,
                                        "demo_videos": 8}
    assert training["run_config"]["run"]["max_steps"] == 400 and training["run_config"]["model"]["embed_dim"] == 64
    assert training["commit"] is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", training["commit"])
    assert "World size 2 (x grad_accum 1); samples per optimizer step when a corpus is drawn: demo_images 32" in readme
    assert "Learning rate 0.001 (cosine schedule, 30 warm-up steps)" in readme

    rows = {(row["set"], row["name"]): row for row in card["figures"]}
    metrics = card["metrics"]
    t2i = rows[("image", "text->image R@1")]
    assert t2i["value"] == round(metrics["image/img_r1"], 4)
    assert t2i["chance"] == {"what": "random ranking", "value": round(1 / metrics["image/images"], 4)}
    region = rows[("region", "region text->region R@1")]
    assert region["chance"]["value"] == round(metrics["region/region_text/img_r1_chance"], 4)
    assert rows[("region", "grounding accuracy (IoU >= 0.5)")]["chance"]["what"] == "a centre box"
    assert rows[("video", "text->video R@1")]["chance"]["value"] == round(1 / metrics["video/videos"], 4)
    assert not any(row["name"] in ("images", "eval_s") for row in card["figures"])
    assert f"| image | text->image R@1 | {t2i['value']:.4f} | {t2i['chance']['value']:.4f} (random ranking) |" in readme

    for command in ("x2vlm-eval THIS_FOLDER", "x2vlm-predict rank THIS_FOLDER", "x2vlm-zero-shot THIS_FOLDER",
                    "x2vlm-finetune --task retrieval --config PRESET.yaml --model THIS_FOLDER",
                    "model.init_from=THIS_FOLDER", "X2VLMPredictor('THIS_FOLDER')"):
        assert command in readme, command

    absolute = [s for s in _strings(card) if s.startswith("/")]
    assert absolute == []
    for place in (str(trained_demo.root), str(REPO_ROOT), "/tmp/"):
        assert place not in readme and place not in json.dumps(card), place

