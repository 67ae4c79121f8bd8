"""Faults during a run, on 2 real DeepSpeed ranks (CPU, gloo) with the tiny model: a
non-finite loss in one micro-step of a gradient-accumulation step, a kill and resume after
it, a checkpoint write that fails, a second trainer on the same output folder, and the
`deepspeed` launcher terminated under its ranks (they checkpoint and exit 85)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from engine_support import (REPO_ROOT, Ranks, data_config, free_port, losses_by_step, run_ranks, wait_for,
                            write_run_config)
from training.runtime import safe_load
from training.engine.checkpoint import CRASH_ENV, FAIL_ENV, complete_checkpoints, tag_for
from training.engine.trainer import NONFINITE_ENV
from training.pretrain import COLLECTIVE_EXIT_CODE

# Step 2's second micro-step on rank 1 has a NaN loss.
PLANTED = {NONFINITE_ENV: "2:1:1"}


def accumulating_config(directory, shards, stage: int = 2, max_steps: int = 6):
    return write_run_config(directory, shards, zero_stage=stage, max_steps=max_steps,
                            data=data_config(shards, image_batch=2, kinds=("image_text",)),
                            optim={"grad_accum": 2}, checkpoint={"every_steps": 3})


def train_rows(out_dir) -> list[dict]:
    return [row for row in map(json.loads, (out_dir / "metrics.jsonl").read_text().splitlines())
            if row["kind"] == "train"]


def engine_counters(checkpoint) -> tuple[int, int]:
    """DeepSpeed's optimizer-step and skipped-step counts saved in a checkpoint."""
    model_file = next(checkpoint.glob("*model_states.pt"))
    state = safe_load.load(model_file)
    return state["global_steps"], state["skipped_steps"]


@pytest.fixture(scope="module")
def accumulating_run(engine_shards, tmp_path_factory):
    directory = tmp_path_factory.mktemp("accumulating")
    config = accumulating_config(directory, engine_shards)
    codes, output = run_ranks(config, 2, "--resume", "none", env=PLANTED)
    assert codes == [0, 0], output
    return directory / "out", output


@pytest.mark.parametrize("stage", [2, 3])
def test_a_non_finite_micro_step_skips_the_whole_step_and_keeps_the_counters_aligned(tmp_path, engine_shards,
                                                                                      accumulating_run, stage):
    if stage == 2:
        out, output = accumulating_run
    else:
        codes, output = run_ranks(accumulating_config(tmp_path, engine_shards, stage=3, max_steps=3), 2,
                                  "--resume", "none", env=PLANTED)
        assert codes == [0, 0], output
        out = tmp_path / "out"
    steps = 6 if stage == 2 else 3
    assert "[guard] step 2: non-finite loss, update skipped (1 in a row)" in output
    # Every micro-step went through DeepSpeed: its counts are the trainer's, one step skipped.
    assert f"[done] {steps} steps (DeepSpeed: {steps} optimizer steps, 1 skipped, {2 * steps} micro-steps)" in output
    assert engine_counters(out / "checkpoints" / tag_for(3)) == (3, 1)
    rows = train_rows(out)
    assert [row["step"] for row in rows] == list(range(1, steps + 1))
    assert [row["nonfinite_skipped"] for row in rows] == [0] + [1] * (steps - 1)
    # The skipped step left the schedule where it was (warm-up: +lr/5 a step).
    assert rows[1]["lr"] == rows[0]["lr"] and rows[2]["lr"] == pytest.approx(rows[0]["lr"] + 0.002 / 5)


def test_kill_and_resume_after_a_skipped_step_is_bitwise_and_logs_each_step_once(tmp_path, engine_shards,
                                                                                accumulating_run):
    reference = losses_by_step(accumulating_run[0])
    config = accumulating_config(tmp_path, engine_shards)
    out = tmp_path / "out"
    # Rank 0 is killed as the step-6 save starts: rows of steps 4-6 were written, their
    # checkpoint never was.
    ranks = Ranks(config, 2, "--resume", "none", env={**PLANTED, CRASH_ENV: "engine_save:6:0"})
    wait_for(lambda: any(p.poll() is not None for p in ranks.procs), 300, "the injected crash")
    ranks.kill()
    assert [row["step"] for row in train_rows(out)] == list(range(1, 7))
    assert [c.step for c in complete_checkpoints(out / "checkpoints")] == [3]
    codes, output = run_ranks(config, 2, "--resume", "auto", env=PLANTED)
    assert codes == [0, 0], output
    assert f"[resume] step 3 from {out / 'checkpoints' / tag_for(3)}" in output
    assert "[metrics] metrics.jsonl: dropped 3 rows after step 3, where this run starts" in output
    rows = train_rows(out)
    assert [row["step"] for row in rows] == list(range(1, 7))
    # The restored counter: steps after the resume still count the skip of step 2.
    assert [row["nonfinite_skipped"] for row in rows] == [0, 1, 1, 1, 1, 1]
    assert "(DeepSpeed: 6 optimizer steps, 1 skipped, 12 micro-steps)" in output
    assert losses_by_step(out) == reference


def test_a_failed_checkpoint_write_stops_every_rank_and_leaves_no_partial_folder(tmp_path, engine_shards):
    config = write_run_config(tmp_path, engine_shards, max_steps=4, checkpoint={"every_steps": 2},
                              data=data_config(engine_shards, image_batch=2, kinds=("image_text",)))
    # Rank 1's first DeepSpeed file of the step-4 checkpoint hits a full disk.
    codes, output = run_ranks(config, 2, "--resume", "none", env={FAIL_ENV: "engine_write:4:1"})
    assert codes == [4, 4], output
    lines = [line for line in output.splitlines() if "could not write" in line and line.startswith("[checkpoint]")]
    folder = tmp_path / "out" / "checkpoints" / tag_for(4)
    assert lines == [f"[checkpoint] step 4: rank 1 could not write {folder}/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt: "
                     f"No space left on device"], output
    assert "the checkpoint of step 4 could not be written" in output
    assert not folder.exists()
    assert [c.step for c in complete_checkpoints(tmp_path / "out" / "checkpoints")] == [2]


def test_second_trainer_is_refused_and_sigterm_to_the_launcher_checkpoints_and_exits_85(tmp_path, engine_shards):
    config = write_run_config(tmp_path, engine_shards, max_steps=10_000, checkpoint={"every_steps": 10_000},
                              data=data_config(engine_shards, image_batch=2, kinds=("image_text",)))
    out = tmp_path / "out"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1",
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    log = open(tmp_path / "launcher.log", "w")
    tree = []
    launcher = subprocess.Popen(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()),
                                 "training/pretrain.py", "--config", str(config), "--resume", "none"],
                                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 2,
                 300, "training under the launcher")
        tree = psutil.Process(launcher.pid).children(recursive=True)
        # deepspeed (the runner) -> deepspeed.launcher.launch -> one process per rank
        [node_launcher] = psutil.Process(launcher.pid).children()
        ranks = node_launcher.children()
        assert len(ranks) == 2 and all("training/pretrain.py" in p.cmdline() for p in ranks)
        rank0 = next(p for p in ranks if "--local_rank=0" in p.cmdline())

        codes, second = run_ranks(config, 1, "--resume", "none")
        assert codes == [2], second
        assert re.search(rf"x2vlm-pretrain: {re.escape(str(out))} is in use by another trainer: host \S+, "
                         rf"pid {rank0.pid}, since ", second), second

        # SIGTERM, as timeout, docker stop, Kubernetes and systemd send it to the top process: the
        # runner dies of it and passes nothing on to DeepSpeed's per-node launcher. The ranks see
        # it gone, checkpoint after the step, and exit 85 (requeue) as after a signal of their own.
        launcher.terminate()
        _, alive = psutil.wait_procs(ranks, timeout=60)
        assert not alive, [p.pid for p in alive]
        output = (tmp_path / "launcher.log").read_text()
        # The first rank to see it asks; the step's stop flag takes the other along.
        assert "is gone: this rank (pid" in output and "checkpoints after this step" in output, output
        [saved] = complete_checkpoints(out / "checkpoints")
        assert f"[signal] checkpointed at step {saved.step}; exiting with 85 to requeue" in output, output
        assert "stopping this rank" not in output  # within guard.launcher_grace_s
        wait_for(lambda: "exits with return code = 85" in (tmp_path / "launcher.log").read_text(), 30,
                 "the node launcher's report of the ranks' exit")
        assert (out / "trainer.lock").read_text() == ""  # released on the way out
    finally:
        for process in [launcher, *tree]:
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                process.kill()
        log.close()


def test_a_stalled_eval_shard_and_a_frozen_rank_end_within_their_bounds(tmp_path, engine_shards):
    # The held-out set is a pipe that never sends a byte: each evaluation gives up on it at
    # loader.shard_read_timeout_s and training goes on. Then rank 1 freezes: rank 0 stops within
    # guard.collective_timeout_s, naming it.
    data = data_config(engine_shards, image_batch=2, kinds=("image_text",))
    data["loader"]["shard_read_timeout_s"] = 2
    config = write_run_config(tmp_path, engine_shards, max_steps=10_000, checkpoint={"every_steps": 10_000},
                              data=data, guard={"collective_timeout_s": 20},
                              eval={"every_steps": 2, "image_shards": ["pipe:sleep 100000"]})
    metrics = tmp_path / "out/metrics.jsonl"
    ranks = Ranks(config, 2, "--resume", "none")
    try:
        wait_for(lambda: metrics.exists() and sum('"kind": "eval"' in line for line in metrics.read_text().splitlines())
                 >= 2, 300, "two evaluations", ranks)
        evals = [row for row in map(json.loads, metrics.read_text().splitlines()) if row["kind"] == "eval"]
        assert [(row["image/unusable"], row["image/skipped"]) for row in evals[:2]] == [(1, 1), (1, 1)]
        assert all(2 <= row["eval_s"] < 10 for row in evals[:2]), evals
        time.sleep(6)  # past the heartbeat interval: rank 1's last note is older than rank 0's
        os.kill(ranks.procs[1].pid, signal.SIGSTOP)  # a hung node: alive, silent, at 0 % CPU
        stopped = time.monotonic()
        assert ranks.procs[0].wait(timeout=120) == COLLECTIVE_EXIT_CODE
        waited = time.monotonic() - stopped
    finally:
        ranks.kill()
    output = ranks.output()
    assert 15 < waited < 60, (waited, output[-3000:])
    assert re.search(r"x2vlm-pretrain: rank 0: a collective failed \(.*\) after waiting up to "
                     r"guard.collective_timeout_s=20 s; least recently heard from: rank 1 \(step \d+, \d+ s ago, "
                     rf"host \S+ pid {ranks.procs[1].pid}\)\. No checkpoint can be written without every rank: exit "
                     rf"{COLLECTIVE_EXIT_CODE}; requeue the job", output), output[-3000:]
    assert "held-out set image left out of this evaluation: eval image_text shards ['pipe:sleep 100000']...: no " \
           "usable sample (skipped: {'shard_timeout': 1})" in output
    assert "Traceback" not in output.split("[train] step 3")[-1].split("x2vlm-pretrain: rank 0")[0]
