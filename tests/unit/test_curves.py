"""x2vlm-curves: the panels a run's metrics.jsonl fills, and the PNG."""
from __future__ import annotations

import json

from PIL import Image

from training.curves import main, panels_of, read_metrics


def write_metrics(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_panels_follow_the_logged_keys_and_a_resumed_step_replaces_the_first(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    write_metrics(metrics, [
        {"kind": "train", "step": 10, "loss": 5.0, "region/itc": 3.8},
        {"kind": "train", "step": 20, "loss": 4.0, "region/itc": 3.0},
        {"kind": "train", "step": 20, "loss": 3.5, "region/itc": 2.9},  # logged again after a resume
        {"kind": "eval", "step": 20, "region/grounding_acc": 0.2, "region/centre_baseline_acc": 0.01,
         "region/region_text/img_r1": 0.07, "region/region_text/txt_r1": 0.06,
         "region/region_text/img_r1_chance": 0.007},
    ])
    train, evaluation = read_metrics(metrics)
    assert [r["loss"] for r in train] == [5.0, 3.5]
    panels = {title: keys for title, keys, _ in panels_of(train, evaluation)}
    assert panels == {
        "total loss": ["loss"],
        "region": ["region/itc"],
        "grounding (held out)": ["region/grounding_acc", "region/centre_baseline_acc"],
        "region-text retrieval (held out)": ["region/region_text/img_r1", "region/region_text/txt_r1",
                                             "region/region_text/img_r1_chance"],
    }
    out = tmp_path / "curves.png"
    assert main([str(metrics), "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 0
