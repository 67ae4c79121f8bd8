"""x2vlm-pretrain --init-from a model folder under ZeRO-2 and ZeRO-3 (one CPU rank, fp32): the
losses logged at step 1 are the source model's own on that step's batch, the optimizer and
schedule start at step 0, the report lists what was loaded; and a checkpoint in the output
folder wins over init_from."""
from __future__ import annotations

import json

import pytest
import torch

from engine_support import data_config, run_ranks, tiny_model, write_run_config
from training.runtime import rng_state
from training.model import create_model
from training.folders.model_folder import ModelCard, write_model_folder
from data_pipeline.kinds import data_kind
from data_pipeline.kinds.collate import rows_per_batch
from training.engine.trainer import move_batch
from training.tasks.task import Task

SEED = 3  # write_run_config's run.seed


def _first_step_losses(source, config_path) -> dict[str, float]:
    """What the trainer's step 1 computes with SOURCE's weights: the loader's first batch of
    rank 0 of 1, the ITM negatives drawn after the trainer's seeding, one thread as the rank runs."""
    from data_pipeline.loader.mixer import MixedLoader
    from data_pipeline.spec import parse_data_spec
    from training.engine.run_config import load_run_config

    config = load_run_config(config_path)
    spec = parse_data_spec(config.data)
    loader = MixedLoader(spec, 0, 1)
    try:
        batches = next(loader)
    finally:
        loader.close()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng_state.seed_everything(SEED)
        with torch.no_grad():
            task = Task.for_model(source.train(), batches=tuple(data_kind(k).batch for k in batches))
            # Padded to the rows the trainer pads to: a sum over more (masked) columns can round
            # otherwise in the last bit, on some CPUs.
            out = task({data_kind(k).batch: {**move_batch(b, torch.device("cpu")),
                                             "rows": rows_per_batch(spec.corpora_of(k))} for k, b in batches.items()})
    finally:
        torch.set_num_threads(threads)
    return {"loss": float(out["loss"]), **{f"{kind}/{term}": float(value) for kind, terms in out["losses"].items()
                                          for term, value in terms.items()}}


@pytest.mark.parametrize("stage", [2, 3])
def test_init_from_a_model_folder_gives_the_source_models_losses_at_step_1(tmp_path, engine_shards, stage):
    torch.manual_seed(100)  # weights the run's own seed would not give
    source = create_model(tiny_model(), load_pretrained=False)
    folder = write_model_folder(tmp_path / "source", dict(source.named_parameters()), source.config,
                                engine_shards / "tokenizer", ModelCard(source={"kind": "test"}))
    config = write_run_config(tmp_path / "run", engine_shards, zero_stage=stage, max_steps=1,
                              data=data_config(engine_shards, kinds=("image_text", "region")),
                              optim={"precision": "fp32", "warmup_steps": 0}, checkpoint={"every_steps": 1})
    codes, output = run_ranks(config, 1, "--resume", "none", "--init-from", str(folder))
    assert codes == [0], output
    out = tmp_path / "run/out"
    row = next(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
               if json.loads(line)["kind"] == "train")
    expected = _first_step_losses(source, config)
    assert set(expected) == {"loss", "image/itc", "image/itm", "image/mlm", "region/itc", "region/itm", "region/mlm",
                             "region/bbox", "region/giou"}
    assert row["step"] == 1 and {name: row[name] for name in expected} == expected
    assert [p.name for p in (out / "checkpoints").glob("step_*")] == ["step_00000001"]  # from step 0, not resumed

    parameters = len(list(source.parameters()))
    assert f"[init] model.init_from {folder} (model folder): {parameters} of {parameters} parameters loaded" in output
    assert "[init] 0 parameters keep their initial values" in output
    report = json.loads((out / "init_from.json").read_text())
    assert report["kind"] == "model folder" and len(report["loaded"]) == parameters and report["random"] == []

    if stage == 2:  # the output folder now holds the step-1 checkpoint: --resume auto takes it
        codes, output = run_ranks(config, 1, "--init-from", str(folder), "--set", "run.max_steps=2")
        assert codes == [0], output
        assert "[resume] step 1 from" in output
        assert (f"[init] resuming from {out / 'checkpoints/step_00000001'}: its weights replace those of "
                f"model.init_from {folder}") in output
