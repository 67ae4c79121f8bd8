"""Checkpoint files that cannot run code and cannot be silently wrong: weights-only loading
(DeepSpeed's own loaders included), checksums written while saving and verified before
trusting a checkpoint, failed writes recorded, and the metrics log cut back to a resumed step."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.runtime import safe_load
from training.engine.checkpoint import MARKER, CheckpointError, find_resumable, tag_for, verify_checkpoint
from training.engine.checkpoint_integrity import SaveLog, save_hashed, verify_file
from training.engine.metrics import drop_rows_after


class Payload:
    """Unpickling it runs `os.system`: it creates MARKER."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_payload(path: Path, marker: Path) -> None:
    torch.save({"module": {"weight": torch.zeros(2)}, "extra": Payload(marker)}, path)


def record(path: Path) -> dict:
    data = path.read_bytes()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def make_checkpoint(root: Path, step: int, files: dict[str, object]) -> Path:
    """A committed checkpoint folder holding FILES (name -> object saved with torch.save)."""
    folder = root / tag_for(step)
    folder.mkdir(parents=True)
    manifest = {}
    for name, obj in files.items():
        manifest[name] = save_hashed(obj, folder / name)
    (folder / MARKER).write_text(json.dumps({"step": step, "world_size": 1, "fingerprint": "f", "files": manifest}))
    return folder


def relist(folder: Path) -> None:
    """Rewrites the marker's checksums to match the files as they are now (an attacker's move)."""
    meta = json.loads((folder / MARKER).read_text())
    meta["files"] = {name: record(folder / name) for name in meta["files"]}
    (folder / MARKER).write_text(json.dumps(meta))


def test_the_hash_written_while_saving_is_that_of_the_file(tmp_path):
    state = {"weights": torch.randn(300, 70), "step": 7, "rng": [3, list(range(625)), None]}
    assert save_hashed(state, tmp_path / "a.pt") == record(tmp_path / "a.pt")
    assert save_hashed(state, tmp_path / "b.pt", zipfile_serialization=False) == record(tmp_path / "b.pt")


def test_a_pickled_payload_is_refused_by_every_loader(tmp_path):
    marker = tmp_path / "ran"
    write_payload(tmp_path / "evil.pt", marker)
    with pytest.raises(pickle.UnpicklingError, match="posix.system"):
        safe_load.load(tmp_path / "evil.pt")
    # DeepSpeed's loaders ask for weights_only=False; inside the block they do not get it.
    with safe_load.weights_only_loading(), safe_load.weights_only_loading():
        with pytest.raises(pickle.UnpicklingError, match="posix.system"):
            torch.load(tmp_path / "evil.pt", weights_only=False)
        from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
        with pytest.raises(pickle.UnpicklingError):
            TorchCheckpointEngine().load(str(tmp_path / "evil.pt"))
    assert torch.load is safe_load._original_load
    assert not marker.exists()


def test_verification_names_truncated_flipped_foreign_and_unlisted_files(tmp_path):
    marker = tmp_path / "ran"
    folder = make_checkpoint(tmp_path / "ckpt", 4, {"model.pt": {"w": torch.arange(1000.0)},
                                                     "optim.pt": {"m": torch.ones(1000)},
                                                     "state.pt": {"step": 4}})
    assert verify_checkpoint(folder) == []
    model_size = (folder / "model.pt").stat().st_size
    data = bytearray((folder / "optim.pt").read_bytes())
    data[len(data) // 2] ^= 1
    (folder / "optim.pt").write_bytes(bytes(data))
    (folder / "model.pt").write_bytes((folder / "model.pt").read_bytes()[:100])
    (folder / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"dropped in")
    model, optim, unlisted = verify_checkpoint(folder)
    assert model == f"{folder}/model.pt: 100 bytes, the marker says {model_size} (truncated or overwritten)"
    assert optim.startswith(f"{folder}/optim.pt: sha256 ") and optim.endswith("(corrupted)")
    assert unlisted == f"{folder}/zero_pp_rank_1_mp_rank_00_optim_states.pt: not listed in the marker (DeepSpeed could load it)"

    # A payload whose checksum was rewritten with it still does not load.
    write_payload(folder / "state.pt", marker)
    relist(folder)
    problem = verify_file(folder, "state.pt", record(folder / "state.pt"))
    assert problem == f"{folder}/state.pt: refused to load weights-only: Trying to load unsupported GLOBAL posix.system " \
                      f"whose module posix is blocked."
    assert verify_file(folder, "../elsewhere.pt", {"size": 1, "sha256": "x"}).endswith("a path outside the checkpoint")
    assert not marker.exists()


def test_resume_auto_falls_back_to_the_newest_checkpoint_that_verifies(tmp_path, capsys):
    marker = tmp_path / "ran"
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6, 8):
        make_checkpoint(root, step, {"state.pt": {"step": step}, "optim.pt": {"m": torch.full((64,), float(step))}})
    write_payload(root / tag_for(8) / "state.pt", marker)
    relist(root / tag_for(8))
    (root / tag_for(6) / "optim.pt").write_bytes(b"")
    meta = json.loads((root / tag_for(4) / MARKER).read_text())
    del meta["files"]  # a marker of the format before checksums
    (root / tag_for(4) / MARKER).write_text(json.dumps(meta))

    assert find_resumable(root, "auto").step == 2
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in err] == [f"[resume] skipping {root / tag_for(s)}" for s in (8, 6, 4)]
    assert "refused to load weights-only" in err[0] and "trying the previous one" in err[0]
    assert f"{root / tag_for(6)}/optim.pt: 0 bytes" in err[1]
    assert "lists no file checksums" in err[2]
    assert not marker.exists()

    (root / tag_for(2) / "state.pt").unlink()
    with pytest.raises(CheckpointError, match=f"no checkpoint under {root} can be trusted: .*{root / tag_for(2)}/state.pt: "
                                              f"missing"):
        find_resumable(root, "auto")
    with pytest.raises(CheckpointError, match="state.pt: missing"):
        find_resumable(root, str(root / tag_for(2)))
    assert find_resumable(tmp_path / "empty", "auto") is None


def test_a_malformed_or_forged_marker_or_a_linked_step_folder_is_passed_over(tmp_path, capsys):
    root = tmp_path / "checkpoints"
    make_checkpoint(root, 2, {"state.pt": {"step": 2}})
    forged = {4: {"world_size": -1}, 6: {"world_size": "2"}, 8: {"files": {"state.pt": ["size", 1]}},
              10: {"step": True}}
    for step, change in forged.items():
        folder = make_checkpoint(root, step, {"state.pt": {"step": step}})
        meta = json.loads((folder / MARKER).read_text())
        meta.update(change)
        (folder / MARKER).write_text(json.dumps(meta))
    deep = make_checkpoint(root, 12, {"state.pt": {"step": 12}})
    (deep / MARKER).write_text("[" * 100_000 + "]" * 100_000)
    # A step folder that links outside the run (to another run's good checkpoint).
    elsewhere = make_checkpoint(tmp_path / "other", 14, {"state.pt": {"step": 14}})
    (root / tag_for(14)).symlink_to(elsewhere)
    assert find_resumable(root, "auto").step == 2
    err = capsys.readouterr().err
    assert err.count("[resume] skipping") == 5 and tag_for(14) not in err, err
    assert f"{root / tag_for(12) / MARKER}: unreadable (RecursionError" in err
    for step in (4, 6, 8):
        assert f"{root / tag_for(step) / MARKER}: malformed" in err


def test_a_failed_write_is_recorded_once_and_stops_further_writes(tmp_path):
    folder = tmp_path / "step"
    folder.mkdir()
    log = SaveLog(folder)
    log.write(folder / "a.pt", {"x": 1})
    log.write(folder / "missing-dir" / "b.pt", {"x": 2})  # the OSError of a failed open
    log.write(folder / "c.pt", {"x": 3})
    assert set(log.records) == {"a.pt"} and not (folder / "c.pt").exists()
    assert log.describe_failure() == f"{folder}/missing-dir/b.pt: No such file or directory"

    def disk_full(path):
        raise OSError(28, "No space left on device", str(path))
    full = SaveLog(folder, before_write=disk_full)
    full.write(folder / "d.pt", {"x": 4})
    assert full.describe_failure() == f"{folder}/d.pt: No space left on device"
    assert not (folder / "d.pt").exists()  # the partial file is removed


def test_metrics_rows_after_the_resumed_step_are_dropped(tmp_path):
    log = tmp_path / "metrics.jsonl"
    rows = [{"kind": "train", "step": s, "loss": 1.0 / s} for s in range(1, 8)] + [{"kind": "eval", "step": 5}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "train", "st')  # torn by a crash
    assert drop_rows_after(log, 4) == 5
    assert [json.loads(line) for line in log.read_text().splitlines()] == rows[:4]
    assert drop_rows_after(log, 4) == 0 and drop_rows_after(tmp_path / "none.jsonl", 4) == 0


def test_the_universal_conversion_runs_weights_only(tmp_path):
    """ds_to_universal (the conversion for a resume on another world size) loads with
    weights_only=False; run through training.runtime.safe_load it refuses a payload that DeepSpeed's
    own entry point would execute."""
    marker = tmp_path / "ran"
    source = tmp_path / "step_00000002"
    source.mkdir()
    write_payload(source / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", marker)
    write_payload(source / "mp_rank_00_model_states.pt", marker)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}

    def convert(*runner: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", *runner, "--input_folder", str(source),
                               "--output_folder", str(tmp_path / "universal"), "--num_extract_workers", "1",
                               "--num_merge_workers", "1"], capture_output=True, text=True, env=env, timeout=300)

    safe = convert("training.runtime.safe_load", "deepspeed.checkpoint.ds_to_universal")
    assert safe.returncode != 0 and "GLOBAL posix.system" in safe.stderr, safe.stderr[-2000:]
    assert not marker.exists()
    unsafe = convert("deepspeed.checkpoint.ds_to_universal")  # the control: DeepSpeed alone runs it
    assert marker.exists(), unsafe.stderr[-2000:]
