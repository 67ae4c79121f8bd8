"""Proof that the system learns: the demo run (configs/runs/demo.yaml: the demo model, 2 CPU
ranks, ZeRO-2) trained from random weights on the demo corpus, then evaluated on its held-out
split. Text-to-image R@1 must reach 10 times chance and grounding accuracy twice that of a
fixed centre box.

The data are what `make demo` builds (scripts/demo_data.sh), in a temporary directory; the run
is the demo's own config with only its output paths changed, so the test and the demo cannot
drift apart.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from engine_support import REPO_ROOT, Ranks


def _demo_run_config(tmp_path: Path) -> Path:
    """configs/runs/demo.yaml with its data under TMP_PATH/runs/demo and its output in TMP_PATH."""
    run = yaml.safe_load((REPO_ROOT / "configs/runs/demo.yaml").read_text())
    configs = REPO_ROOT / "configs/runs"
    data = yaml.safe_load((configs / run["data"]).read_text())
    data["root"] = str(tmp_path)  # the data config names runs/demo/... below its root
    run["data"] = data
    run["model"] = str((configs / run["model"]).resolve())
    run["deepspeed"] = str((configs / run["deepspeed"]).resolve())
    run["run"]["output_dir"] = str(tmp_path / "train")
    run["eval"] = {**run["eval"], **{key: [str(tmp_path / pattern) for pattern in run["eval"][key]]
                                     for key in ("image_shards", "region_shards", "video_shards")}}
    # Held-out evaluation once, after the last step; no checkpoint but the final one.
    run["eval"]["every_steps"] = run["run"]["max_steps"]
    run["checkpoint"]["every_steps"] = run["run"]["max_steps"]
    run.setdefault("logging", {})["tensorboard"] = False
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run, sort_keys=False))
    return path


def test_demo_run_learns_retrieval_and_grounding(tmp_path, capsys):
    subprocess.run(["bash", str(REPO_ROOT / "scripts/demo_data.sh"), str(tmp_path / "runs/demo")], check=True,
                   cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
    config = _demo_run_config(tmp_path)
    ranks = Ranks(config, 2, "--resume", "none", log_dir=tmp_path)
    codes = ranks.wait(timeout=1200)
    assert codes == [0, 0], ranks.output()[-4000:]

    rows = [json.loads(line) for line in (tmp_path / "train/metrics.jsonl").read_text().splitlines()]
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
