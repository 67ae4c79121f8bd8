"""The training engine end to end on CPU: 2 DeepSpeed ranks over gloo, the tiny model, demo
shards. Training, exact resume after SIGKILL and after SIGUSR1, crashes during a checkpoint
write, export from ZeRO-3, and the configuration errors that stop a run before it starts."""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from engine_support import (REPO_ROOT, Ranks, data_config, losses_by_step, run_ranks, wait_for,
                            write_run_config)
from wandb_records import offline_runs
from training.engine.checkpoint import CRASH_ENV, MARKER, complete_checkpoints, tag_for
from training.engine.trainer import NONFINITE_ENV
from training.runtime.signals import REQUEUE_EXIT_CODE


@pytest.fixture
def shards(engine_shards):
    return engine_shards


# The exact-resume runs train with ALBEF's momentum distillation on from step 6 (start_step 5):
# its momentum weights and queues (which wrap around: 32 region rows a step) must come back bit
# for bit too.
MOMENTUM = ("--set", "model.losses.momentum_distillation.enabled=true",
            "--set", "model.losses.momentum_distillation.queue_size=256",
            "--set", "model.losses.momentum_distillation.alpha_ramp_steps=10",
            "--set", "model.losses.momentum_distillation.start_step=5")

# The exact-resume runs train captioning too (image/lm, off by default): its state must survive
# a kill and a resume bitwise like the other losses'.
CAPTIONING = ("--set", "model.losses.weights.image.lm=0.5")


def mean(values):
    return sum(values) / len(values)


def grouped_data(shards) -> dict:
    """The default data with grouped mini-batches on: the exact-resume runs below hold for it too
    (from step 4 on the loader regroups by the features the ranks record)."""
    return {**data_config(shards), "grouping": {"enabled": True, "pool_batches": 2, "refresh_steps": 4}}


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stage_trains_and_the_loss_falls(tmp_path, shards, stage):
    steps = 100
    config = write_run_config(tmp_path, shards, zero_stage=stage, max_steps=steps,
                              data=data_config(shards, kinds=("image_text", "region")),
                              checkpoint={"every_steps": steps}, logging={"every_steps": 5})
    # A run that does not report to wandb never imports it: a `wandb` first on the path marks
    # its import.
    poison = tmp_path / "poison/wandb"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("import os, pathlib\npathlib.Path(os.environ['WANDB_IMPORT_MARK']).touch()\n")
    codes, output = run_ranks(config, 2, "--resume", "none", env={
        "PYTHONPATH": f"{poison.parent}:{REPO_ROOT}", "WANDB_IMPORT_MARK": str(tmp_path / "wandb_imported")})
    assert codes == [0, 0], output
    assert not (tmp_path / "wandb_imported").exists()
    losses = losses_by_step(tmp_path / "out")
    assert sorted(losses) == list(range(5, steps + 1, 5))
    rows = [json.loads(line) for line in (tmp_path / "out/metrics.jsonl").read_text().splitlines()]
    assert all(row["tflops_per_gpu"] > 0 for row in rows if row["kind"] == "train")  # FLOPs counted at step 1
    assert f"[progress] step {steps}/{steps} (100%) | loss " in output and " left" in output
    first, last = mean([losses[s] for s in (5, 10, 15)]), mean([losses[s] for s in range(steps - 10, steps + 1, 5)])
    print(f"ZeRO-{stage}: mean loss at steps 5-15 {first:.3f}, at steps {steps - 10}-{steps} {last:.3f}")
    assert last < 0.8 * first
    assert [c.step for c in complete_checkpoints(tmp_path / "out/checkpoints")] == [steps]
    # Every file a run writes is as readable as the umask allows (0644 under the usual 022), so
    # that a colleague on a shared file system can resume, export or read the run.
    umask = os.umask(0)
    os.umask(umask)
    modes = {str(path.relative_to(tmp_path)): stat.S_IMODE(path.stat().st_mode)
             for path in (tmp_path / "out").rglob("*") if path.is_file() and path.name != "trainer.lock"}
    # (read and write bits: DeepSpeed copies its zero_to_fp32.py scripts executable)
    assert modes and all(mode & 0o666 == 0o666 & ~umask for mode in modes.values()), modes


@pytest.fixture(scope="module")
def uninterrupted(engine_shards, tmp_path_factory):
    """The reference: 40 steps in one go, the loss of every step logged."""
    directory = tmp_path_factory.mktemp("uninterrupted")
    config = write_run_config(directory, engine_shards, max_steps=40, data=grouped_data(engine_shards))
    codes, output = run_ranks(config, 2, "--resume", "none", *MOMENTUM, *CAPTIONING)
    assert codes == [0, 0], output
    losses = losses_by_step(directory / "out")
    assert sorted(losses) == list(range(1, 41))
    rows = [json.loads(line) for line in (directory / "out/metrics.jsonl").read_text().splitlines()]
    assert all(row["image/lm"] > 0 for row in rows if row["kind"] == "train")
    return losses


# The SIGKILL resume reports to Weights & Biases too (offline): one wandb run, continued.
WANDB_OFFLINE = {"report_to": ["jsonl", "wandb"], "wandb": {"mode": "offline", "project": "test"}}


def test_resume_after_sigkill_repeats_the_uninterrupted_losses_bitwise(tmp_path, shards, uninterrupted):
    config = write_run_config(tmp_path, shards, max_steps=40, data=grouped_data(shards), logging=WANDB_OFFLINE)
    checkpoint = tmp_path / "out/checkpoints" / tag_for(20)
    ranks = Ranks(config, 2, *MOMENTUM, *CAPTIONING)
    wait_for(lambda: (checkpoint / MARKER).exists(), 300, "the step-20 checkpoint", ranks)
    ranks.kill()  # SIGKILL to every rank, wherever it is past step 20
    codes, output = run_ranks(config, 2, "--resume", "auto", *MOMENTUM, *CAPTIONING)
    assert codes == [0, 0], output
    assert f"[resume] step 20 from {checkpoint}" in output
    resumed = losses_by_step(tmp_path / "out")
    assert [resumed[s] for s in range(21, 41)] == [uninterrupted[s] for s in range(21, 41)]
    # Grouping's records (one file per rank and corpus epoch) and its figures, per kind.
    assert sorted(p.name for p in (tmp_path / "out/grouping_features/images").iterdir())[:2] == [
        "epoch00000.rank00000.bin", "epoch00000.rank00001.bin"]
    rows = [json.loads(line) for line in (tmp_path / "out/metrics.jsonl").read_text().splitlines()]
    for kind in ("image", "region", "video"):
        for figure in ("itm_neg_sim", "itc_hardness"):
            values = [row[f"{kind}/{figure}"] for row in rows if f"{kind}/{figure}" in row]
            assert values and all(-1 <= v <= 1 for v in values), (kind, figure, values)

    # Weights & Biases, offline: rank 0 alone wrote one run per launch, the resumed launch
    # continuing the killed one's id; every loss it holds is metrics.jsonl's for that step (steps
    # after the checkpoint, logged before the kill, come again with the same values), and the
    # resumed launch logged every step from 21 on.
    runs = offline_runs(tmp_path / "out")
    assert len(runs) == 2 and runs[0][0] == runs[1][0] == (tmp_path / "out/wandb_run_id").read_text().strip()
    train = {row["step"]: row for row in rows if row["kind"] == "train"}
    logged = [(row["step"], row["train/loss"]) for _, history in runs for row in history if "train/loss" in row]
    assert logged and all(loss == train[step]["loss"] for step, loss in logged)
    assert sorted(row["step"] for row in runs[1][1] if "train/loss" in row) == list(range(21, 41))


def test_sigusr1_checkpoints_exits_for_requeue_and_resumes_bitwise(tmp_path, shards, uninterrupted):
    config = write_run_config(tmp_path, shards, max_steps=40, data=grouped_data(shards))
    metrics = tmp_path / "out/metrics.jsonl"
    ranks = Ranks(config, 2, *MOMENTUM, *CAPTIONING)
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 15, 300, "step 15", ranks)
    ranks.signal(signal.SIGUSR1)
    assert ranks.wait(300) == [REQUEUE_EXIT_CODE] * 2, ranks.output()
    [saved] = complete_checkpoints(tmp_path / "out/checkpoints")
    assert 15 <= saved.step < 40
    codes, output = run_ranks(config, 2, *MOMENTUM, *CAPTIONING)  # --resume auto is the default
    assert codes == [0, 0], output
    resumed = losses_by_step(tmp_path / "out")
    assert [resumed[s] for s in range(saved.step + 1, 41)] == [uninterrupted[s] for s in range(saved.step + 1, 41)]


def test_masked_image_modelling_trains_under_zero3_and_resumes_bitwise(tmp_path, shards):
    """MIM with masked-patch dropping: the block masks come from the generators the checkpoint
    saves, the decoder's weights and moments from DeepSpeed's files. The run's checkpoint of
    step 8 is removed, which leaves what a kill between the checkpoints of steps 4 and 8
    leaves; the resumed steps 5-8 repeat the first run's losses bit for bit."""
    config = write_run_config(tmp_path, shards, zero_stage=3, max_steps=8, checkpoint={"every_steps": 4},
                              data=data_config(shards, kinds=("image_text", "region")))
    run = yaml.safe_load(config.read_text())
    run["model"] = {**run["model"],
                    "mim": {"enabled": True, "drop_masked": True, "mask_ratio": 0.5, "decoder_width": 32,
                            "decoder_heads": 2}}
    config.write_text(yaml.safe_dump(run, sort_keys=False))

    def figures():
        rows = [json.loads(line) for line in (tmp_path / "out/metrics.jsonl").read_text().splitlines()]
        return {row["step"]: (row["loss"], row["image/mim"]) for row in rows if row["kind"] == "train"}

    codes, output = run_ranks(config, 2, "--resume", "none")
    assert codes == [0, 0], output
    first = figures()
    assert sorted(first) == list(range(1, 9)) and all(mim > 0 for _, mim in first.values())
    shutil.rmtree(tmp_path / "out/checkpoints" / tag_for(8))
    codes, output = run_ranks(config, 2, "--resume", "auto")
    assert codes == [0, 0], output
    assert "[resume] step 4 from" in output
    resumed = figures()
    assert [resumed[s] for s in range(5, 9)] == [first[s] for s in range(5, 9)]


@pytest.mark.parametrize("crash_at, rank, survivor", [
    ("engine_save", 1, 5),   # rank 1 dies before DeepSpeed writes anything of step 10
    ("rank_state", 0, 5),    # DeepSpeed's files of step 10 written, no trainer state, no marker
    ("marker", 0, 5),        # everything written and synced, the marker not yet
    ("latest", 0, 10),       # marker written: step 10 is complete, `latest` still names step 5
])
def test_sigkill_during_a_checkpoint_write_leaves_a_resumable_run(tmp_path, shards, crash_at, rank, survivor):
    config = write_run_config(tmp_path, shards, max_steps=12, checkpoint={"every_steps": 5},
                              data=data_config(shards, kinds=("image_text", "region")))
    ranks = Ranks(config, 2, "--resume", "none", env={CRASH_ENV: f"{crash_at}:10:{rank}"})
    wait_for(lambda: any(p.poll() is not None for p in ranks.procs), 300, "the injected crash")
    ranks.kill()  # the surviving rank waits in a collective for the dead one
    complete = [c.step for c in complete_checkpoints(tmp_path / "out/checkpoints")]
    assert complete[-1] == survivor
    codes, output = run_ranks(config, 2, "--resume", "auto")
    assert codes == [0, 0], output
    assert f"[resume] step {survivor} from" in output
    assert (tmp_path / "out/checkpoints/latest").read_text() == tag_for(12)
    assert (tmp_path / "out/checkpoints" / tag_for(12) / MARKER).exists()


def test_export_of_a_zero3_checkpoint_equals_the_weights_in_memory(tmp_path, shards):
    config = write_run_config(tmp_path, shards, zero_stage=3, max_steps=6, checkpoint={"every_steps": 6},
                              data=data_config(shards, kinds=("image_text",)))
    # The trainer's export at the end of the run reads the fp32 master weights from memory,
    # gathered from the ZeRO-3 partitions; x2vlm-export reads the checkpoint files.
    codes, output = run_ranks(config, 2, "--resume", "none", "--set", "run.export_on_finish=true")
    assert codes == [0, 0], output
    out = tmp_path / "export"
    result = subprocess.run([sys.executable, "-m", "training.export", str(tmp_path / "out/checkpoints" / tag_for(6)),
                             "--out", str(out)], capture_output=True, text=True, cwd=REPO_ROOT,
                            env={"DS_ACCELERATOR": "cpu", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr
    exported = load_file(str(out / "model.safetensors"))
    in_memory = load_file(str(tmp_path / "out/export/model.safetensors"))
    assert set(exported) == set(in_memory)
    for name, value in in_memory.items():
        assert torch.equal(exported[name], value), name
    from training.folders.model_folder import load_model_folder
    folder = load_model_folder(out)
    model = folder.model
    assert torch.equal(dict(model.named_parameters())["itm_head.0.weight"], in_memory["itm_head.0.weight"])
    assert yaml.safe_load((out / "model.yaml").read_text())["text"]["hidden_size"] == 32
    # The run's tokenizer travels with the weights; the card says where they came from.
    assert sorted(p.name for p in folder.tokenizer.iterdir()) == sorted(p.name for p in (shards / "tokenizer").iterdir())
    assert folder.card.steps == 6 and folder.card.source["checkpoint"] == tag_for(6)
    assert folder.card.training["world_size"] == 2 and folder.card.training["steps"] == 6
    assert [c["name"] for c in folder.card.data["corpora"]] == ["images"]
    assert load_model_folder(tmp_path / "out/export").card.source["kind"] == "training run"


def test_configuration_mistakes_stop_before_training(tmp_path, shards):
    base = write_run_config(tmp_path / "a", shards, max_steps=2)
    cases = [
        (["--set", "optim.warmup_stepz=3"], 2, "optim.warmup_stepz: unknown key"),
        (["--set", f"data.corpora.0.shards={tmp_path}/nowhere-{{000000..000003}}.tar"], 2, "nowhere-000000.tar"),
        (["--set", "optim.global_batch.image_text=9"], 2, "'optim.global_batch.image_text' = 9 cannot be split over 2 ranks"),
        (["--set", "data.image_res=96"], 2, "'vision.image_size' is 64 but data 'image_res' is 96"),
        (["--set", "model.text.vocab_size=50"], 2, "has 80 tokens but the model's 'text.vocab_size' is 50"),
    ]
    for args, world, message in cases:
        codes, output = run_ranks(base, world, "--resume", "none", *args)
        assert codes == [2] * world, (args, output)
        assert message in output, (args, output)
        assert not (tmp_path / "a/out/checkpoints").exists()


def trained_keys(out_dir: Path, corpus: str, steps: range) -> list[tuple[str, int]]:
    """(key, epoch) of every sample of CORPUS trained at STEPS, over all ranks' key logs."""
    found = []
    for log in sorted((out_dir / "trained_keys").glob("rank*.jsonl")):
        for line in log.read_text().splitlines():
            row = json.loads(line)
            if row["step"] not in steps:
                continue
            for kind, batch in row.items():
                if kind != "step" and batch["corpus"] == corpus:
                    found += list(zip(batch["keys"], batch["epochs"]))
    return found


@pytest.mark.parametrize("new_world", [1, 3])
def test_two_rank_checkpoint_resumes_on_another_world_size_covering_the_epoch(tmp_path, shards, new_world):
    """With momentum distillation and grouped mini-batches on: the momentum weights and queues are
    re-dealt to the new ranks, and the samples held in the grouping pools still arrive once."""
    data = {**data_config(shards, kinds=("image_text",)),
            "grouping": {"enabled": True, "pool_batches": 2, "refresh_steps": 4}}
    config = write_run_config(tmp_path / "old", shards, max_steps=10, data=data, checkpoint={"every_steps": 10},
                              logging={"every_steps": 1, "trained_keys": True})
    codes, output = run_ranks(config, 2, "--resume", "none", *MOMENTUM)
    assert codes == [0, 0], output
    before = trained_keys(tmp_path / "old/out", "images", range(1, 11))
    assert len(before) == 10 * 2 * 4

    codes, output = run_ranks(config, new_world, "--set", "run.max_steps=25", *MOMENTUM)
    assert codes == [0] * new_world, output
    assert "[resume] step 10 from" in output and f"universal, from 2 ranks to {new_world}" in output
    after = trained_keys(tmp_path / "old/out", "images", range(11, 26))
    assert len(after) == 15 * new_world * 4

    all_keys = {key for key, _ in before + after}
    assert len(all_keys) == 60  # the demo corpus's train images
    in_progress = {epoch for _, epoch in before}
    assert len(in_progress) >= 1 and max(in_progress) < max(epoch for _, epoch in after)
    for epoch in sorted(in_progress):
        seen = [key for key, e in before + after if e == epoch]
        assert sorted(seen) == sorted(all_keys), f"epoch {epoch}: {len(seen)} samples, {len(set(seen))} distinct"
    # The run goes on from the resumed model: the loss of step 11 follows from step 10's weights.
    losses = losses_by_step(tmp_path / "old/out")
    assert sorted(losses) == list(range(1, 26))


def test_non_finite_losses_skip_updates_then_stop_the_run(tmp_path, shards):
    # Every loss after the first step non-finite, as a run that diverges (a learning rate that
    # would make it so is refused by the config: at most 10).
    config = write_run_config(tmp_path, shards, max_steps=20, data=data_config(shards, kinds=("image_text",)),
                              optim={"warmup_steps": 0, "precision": "fp32"},
                              guard={"max_consecutive_nonfinite": 3})
    codes, output = run_ranks(config, 1, "--resume", "none",
                              env={NONFINITE_ENV: ",".join(f"{step}:0:0" for step in range(2, 21))})
    assert codes == [3], output
    assert "non-finite loss, update skipped (1 in a row)" in output
    assert "3 non-finite losses in a row (guard.max_consecutive_nonfinite=3)" in output
    assert not (tmp_path / "out/checkpoints").exists()
