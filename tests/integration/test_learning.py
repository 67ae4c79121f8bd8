"""Proof that the system learns: the demo run (configs/runs/demo.yaml: the demo model, 2 CPU
ranks, ZeRO-2) trained from random weights on the demo corpus, then evaluated on its held-out
split. Text-to-image R@1 must reach 10 times chance and grounding accuracy twice that of a
fixed centre box.

The run is the session fixture `trained_demo` (tests/conftest.py): the demo's own data and
config with only its output paths changed, so the test and the demo cannot drift apart.
"""
from __future__ import annotations

import json
import sys


def test_demo_run_learns_retrieval_and_grounding(trained_demo, capsys):
    rows = [json.loads(line) for line in (trained_demo.train / "metrics.jsonl").read_text().splitlines()]
    final = [row for row in rows if row["kind"] == "eval"][-1]
    chance = 1 / final["image/images"]
    t2i_r1 = final["image/img_r1"]
    grounding, centre = final["region/grounding_acc"], final["region/centre_baseline_acc"]
    with capsys.disabled():  # the figures belong in every test log, not only a failing one
        print(f"\nlearning test after {final['step']} steps on {final['image/images']} held-out images, "
              f"{final['image/texts']} texts, {final['region/queries']} grounding queries:\n"
              f"  text->image R@1 {t2i_r1:.4f} = {t2i_r1 / chance:.1f}x chance ({chance:.4f}); "
              f"R@5 {final['image/img_r5']:.4f}, R@10 {final['image/img_r10']:.4f}\n"
              f"  image->text R@1 {final['image/txt_r1']:.4f}\n"
              f"  grounding accuracy {grounding:.4f} = {grounding / centre:.1f}x the centre-box baseline ({centre:.4f}), "
              f"mean IoU {final['region/mean_iou']:.4f}\n"
              f"  video text->video R@1 {final['video/img_r1']:.4f} (chance {1 / final['video/videos']:.4f})",
              file=sys.stderr)
    assert t2i_r1 >= 10 * chance
    assert grounding >= 2 * centre
