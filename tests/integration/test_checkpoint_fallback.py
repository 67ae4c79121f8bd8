"""Damaged and hostile checkpoints met by the real trainer (one DeepSpeed rank on CPU, the tiny
model) and by x2vlm-export: `--resume auto` skips, naming them, checkpoints that do not verify
and resumes bit for bit from the newest that does; with none left it stops, naming the files;
a file replaced by a pickle that runs code is refused everywhere and its code never runs."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine_support import REPO_ROOT, data_config, losses_by_step, run_ranks, write_run_config
from training.engine.checkpoint import MARKER, tag_for

OPTIM = "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
MODEL = "mp_rank_00_model_states.pt"
STATE = "trainer_state_rank00000.pt"


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_payload(folder: Path, name: str, marker: Path) -> None:
    """Replaces FOLDER/NAME by a pickle whose loading creates MARKER, and rewrites the
    checkpoint's checksum for it, so that only weights-only loading stands in the way."""
    torch.save({"module": {}, "global_steps": 0, "payload": Payload(marker)}, folder / name)
    meta = json.loads((folder / MARKER).read_text())
    data = (folder / name).read_bytes()
    meta["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / MARKER).write_text(json.dumps(meta))


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def run_config(directory: Path, shards: Path) -> Path:
    return write_run_config(directory, shards, max_steps=6, checkpoint={"every_steps": 2, "keep_last": 3},
                            data=data_config(shards, image_batch=2, kinds=("image_text",)))


@pytest.fixture(scope="module")
def finished_run(engine_shards, tmp_path_factory):
    """Six steps on one rank, checkpoints after steps 2, 4 and 6."""
    directory = tmp_path_factory.mktemp("finished")
    codes, output = run_ranks(run_config(directory, engine_shards), 1, "--resume", "none")
    assert codes == [0], output
    return directory / "out"


@pytest.fixture
def copy_of_run(finished_run, engine_shards, tmp_path):
    """A run config whose output folder holds a copy of the finished run's checkpoints."""
    shutil.copytree(finished_run / "checkpoints", tmp_path / "out" / "checkpoints")
    return run_config(tmp_path, engine_shards), tmp_path / "out" / "checkpoints"


def export(checkpoint: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.export", str(checkpoint), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO_ROOT)})


def test_a_truncated_or_bit_flipped_newest_checkpoint_falls_back_to_the_previous_one(copy_of_run, finished_run):
    config, root = copy_of_run
    newest = root / tag_for(6)
    flip_byte(newest / OPTIM)
    (newest / MODEL).write_bytes((newest / MODEL).read_bytes()[:4096])
    codes, output = run_ranks(config, 1, "--resume", "auto")
    assert codes == [0], output
    skipped = next(line for line in output.splitlines() if line.startswith("[resume] skipping"))
    assert skipped.startswith(f"[resume] skipping {newest}: ")
    assert f"{newest / MODEL}: 4096 bytes, the marker says" in skipped
    assert f"{newest / OPTIM}: sha256 " in skipped and "(corrupted)" in skipped
    assert f"[resume] step 4 from {root / tag_for(4)} (same world size)" in output
    assert "Traceback" not in output
    # Steps 5 and 6 again, from the intact step-4 state: the losses of the first run exactly.
    reference = losses_by_step(finished_run)
    assert losses_by_step(root.parent) == {s: reference[s] for s in (5, 6)}


def test_a_pickle_that_runs_code_is_refused_on_resume_and_by_export(copy_of_run, finished_run, tmp_path):
    config, root = copy_of_run
    marker = tmp_path / "code-ran"
    plant_payload(root / tag_for(6), STATE, marker)  # the trainer's own state file
    plant_payload(root / tag_for(4), OPTIM, marker)  # a DeepSpeed optimizer file

    for step, name in ((4, OPTIM), (6, STATE)):
        result = export(root / tag_for(step), tmp_path / f"export{step}")
        assert result.returncode == 2, result.stderr
        assert (f"x2vlm-export: {root / tag_for(step)} cannot be trusted: {root / tag_for(step) / name}: refused to "
                f"load weights-only: Trying to load unsupported GLOBAL posix.system") in result.stderr
        assert not (tmp_path / f"export{step}" / "model.safetensors").exists()

    codes, output = run_ranks(config, 1, "--resume", "auto")
    assert codes == [0], output
    skipped = [line for line in output.splitlines() if line.startswith("[resume] skipping")]
    assert [line.split(": ")[0] for line in skipped] == [f"[resume] skipping {root / tag_for(s)}" for s in (6, 4)]
    assert all("refused to load weights-only" in line and "posix.system" in line for line in skipped)
    assert f"[resume] step 2 from {root / tag_for(2)}" in output
    reference = losses_by_step(finished_run)
    assert losses_by_step(root.parent) == {s: reference[s] for s in range(3, 7)}
    assert not marker.exists()


def test_when_no_checkpoint_verifies_the_run_stops_naming_the_files(copy_of_run):
    config, root = copy_of_run
    for step in (2, 4, 6):
        flip_byte(root / tag_for(step) / OPTIM)
    codes, output = run_ranks(config, 1, "--resume", "auto")
    assert codes == [4], output
    error = next(line for line in output.splitlines() if line.startswith("x2vlm-pretrain: "))
    assert error.startswith(f"x2vlm-pretrain: no checkpoint under {root} can be trusted: ")
    for step in (2, 4, 6):
        assert f"{root / tag_for(step) / OPTIM}: sha256 " in error
    assert "[train]" not in output and "Traceback" not in output
    # Nothing was overwritten: the damaged checkpoints are there for the user to look at.
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [tag_for(s) for s in (2, 4, 6)]
