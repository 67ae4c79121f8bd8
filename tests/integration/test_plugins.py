"""Plug-ins need no edit of the library: this file defines a data kind and an objective of its
own, a run config turns them on (`plugins: [this file:register_toys]`, a corpus of the kind, the
objective's settings section), and 2 DeepSpeed ranks train them under ZeRO-2: the objective's
loss and figure reach metrics.jsonl, its parameters the checkpoint, and a resume after SIGKILL
repeats the uninterrupted run's figures bit for bit.

The toy kind, `caption_length`, reads image-text shards as image_text does and adds each
drawn caption's length in tokens, scaled by its corpus option `scale`; the toy objective,
`length`, regresses that length from the text's ITC feature with a linear head of its own.
The ranks import this file as a plug-in: what it needs of the test suite is imported inside the
tests, so that the import works outside pytest.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch
import yaml
import torch.nn.functional as F
from torch import nn

from data_pipeline.config import setting
from data_pipeline.kinds import DataKind, register_kind
from data_pipeline.kinds.collate import collate_image_text, collate_image_text_eval
from data_pipeline.transforms import ImageTextOptions, ImageTextTransform
from training.objectives import Objective, register_objective

STEPS, CHECKPOINT = 6, 3


@dataclasses.dataclass
class LengthOptions(ImageTextOptions):
    scale: float = setting(10.0, gt=0)  # the target is the caption's token count / scale


class LengthTransform(ImageTextTransform):
    def _training(self, sample, meta, rng) -> dict:
        out = super()._training(sample, meta, rng)
        out["length"] = np.float32(out["text_mask"].sum() / self.options.scale)
        return out


def collate_lengths(samples: list[dict]) -> dict:
    return {**collate_image_text(samples), "length": torch.tensor([s["length"] for s in samples])}


@dataclasses.dataclass
class LengthSettings:
    prediction_scale: float = setting(1.0, gt=0)


class LengthRegression(Objective):
    name, terms, kinds, settings = "length", ("length_mse",), ("lengths",), LengthSettings

    def __init__(self, config, model):
        super().__init__(config, model)
        self.head = nn.Linear(model.config.embed_dim, 1)

    def forward(self, batch) -> dict:
        predicted = self.head(batch.text.features).squeeze(1).float() * self.section.prediction_scale
        target = batch.fields["length"].float()
        return {"losses": {"length_mse": F.mse_loss(predicted, target)}, "figures": {"length_target": target.mean()}}


def register_toys() -> None:
    register_kind(DataKind(name="caption_length", batch="lengths", vision="image", options=LengthOptions,
                           transform=LengthTransform.for_spec, collate=collate_lengths,
                           eval_collate=collate_image_text_eval, evaluation="retrieval",
                           headline=("img_r1", "txt_r1")))
    register_objective(LengthRegression)


def _config(tmp_path, shards):
    """The test runs' config: image-text and toy corpora, the plug-in, the toy's settings."""
    from engine_support import data_config, write_run_config

    data = data_config(shards, kinds=("image_text",))
    data["corpora"].append({"name": "lengths", "kind": "caption_length", "shards": f"{shards}/image/*.tar",
                            "batch_size": 4, "options": {"rand_augment": False, "scale": 8.0}})
    config = write_run_config(tmp_path, shards, max_steps=STEPS, data=data, checkpoint={"every_steps": CHECKPOINT})
    run = yaml.safe_load(config.read_text())
    run["plugins"] = [f"{__file__}:register_toys"]
    run["model"]["losses"]["length"] = {"prediction_scale": 2.0}
    config.write_text(yaml.safe_dump(run, sort_keys=False))
    return config


def _rows(out_dir) -> dict[int, dict]:
    rows = {}
    for line in (out_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["kind"] == "train":
            rows[row["step"]] = {k: v for k, v in row.items() if "/" in k or k == "loss"}
    return rows


def test_a_data_kind_and_an_objective_of_a_test_file_train_checkpoint_and_resume_bitwise(tmp_path, engine_shards):
    from engine_support import Ranks, run_ranks, wait_for
    from training.engine.checkpoint import MARKER, tag_for
    from training.runtime import safe_load

    unbroken = _config(tmp_path / "unbroken", engine_shards)
    codes, output = run_ranks(unbroken, 2, "--resume", "none")
    assert codes == [0, 0], output[-6000:]
    reference = _rows(tmp_path / "unbroken/out")
    assert sorted(reference) == list(range(1, STEPS + 1))
    for row in reference.values():
        assert np.isfinite(row["lengths/length_mse"]) and row["lengths/length_target"] > 0
        assert "image/itc" in row and "lengths/itc" not in row  # the toy kind gets the toy objective only
    states = safe_load.load(tmp_path / f"unbroken/out/checkpoints/{tag_for(STEPS)}/mp_rank_00_model_states.pt")["module"]
    assert states["objectives.length.head.weight"].shape == (1, 16)

    killed = _config(tmp_path / "killed", engine_shards)
    checkpoint = tmp_path / "killed/out/checkpoints" / tag_for(CHECKPOINT)
    ranks = Ranks(killed, 2, "--resume", "none")
    wait_for(lambda: (checkpoint / MARKER).exists(), 300, f"the step-{CHECKPOINT} checkpoint", ranks)
    ranks.kill()
    codes, output = run_ranks(killed, 2)  # --resume auto
    assert codes == [0, 0], output[-6000:]
    assert f"[resume] step {CHECKPOINT} from {checkpoint}" in output
    resumed = _rows(tmp_path / "killed/out")
    assert [resumed[s] for s in range(CHECKPOINT + 1, STEPS + 1)] == [reference[s] for s in range(CHECKPOINT + 1,
                                                                                                   STEPS + 1)]
