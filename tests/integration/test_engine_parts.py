"""The engine's parts that stand alone: schedule, parameter groups, run config, RNG capture,
signals and the checkpoint manager (on a real single-process DeepSpeed engine)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from training.runtime import rng_state
from data_pipeline.config import ConfigError
from training.runtime import safe_load
from training.engine.checkpoint import (MARKER, CheckpointManager, complete_checkpoints, find_resumable, rank_state_name,
                                 retained_steps, tag_for)
from training.engine.run_config import deepspeed_config, load_run_config
from training.engine.optim import parameter_groups, schedule_factor
from training.runtime.signals import IMMEDIATE_EXIT_CODE, PreemptionHandler


def test_schedule_warms_up_linearly_then_decays():
    assert [schedule_factor(s, 4, 12) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule_factor(4, 4, 12) == 1.0
    assert schedule_factor(8, 4, 12) == 0.5
    assert schedule_factor(12, 4, 12) == 0.0
    assert schedule_factor(50, 4, 12) == 0.0
    assert schedule_factor(8, 4, 12, "cosine") == pytest.approx(0.5)
    assert schedule_factor(6, 4, 12, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert schedule_factor(12, 4, 12, "linear", min_ratio=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="cosine"):
        schedule_factor(8, 4, 12, "step")


def test_parameter_groups_split_decay_and_new_parameters():
    model = torch.nn.ModuleDict({
        "encoder": torch.nn.Linear(3, 3),
        "norm": torch.nn.LayerNorm(3),
        "head": torch.nn.Linear(3, 2),
    })
    groups = parameter_groups(model.named_parameters(), lr=1e-3, weight_decay=0.01,
                              is_new=lambda name: name.startswith("head"), new_lr_scale=2.0)
    ids = {id(p): n for n, p in model.named_parameters()}
    summary = sorted((tuple(sorted(ids[id(p)] for p in g["params"])), g["weight_decay"], g["lr"]) for g in groups)
    assert summary == [
        (("encoder.bias", "norm.bias", "norm.weight"), 0.0, 1e-3),
        (("encoder.weight",), 0.01, 1e-3),
        (("head.bias",), 0.0, 2e-3),
        (("head.weight",), 0.01, 2e-3),
    ]


def write_run(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    (tmp_path / "model.yaml").write_text("name: tiny\n")
    (tmp_path / "data.yaml").write_text("corpora: []\n")
    run = tmp_path / "run.yaml"
    run.write_text(textwrap.dedent("""\
        model: model.yaml
        data: data.yaml
        deepspeed: ds.json
        run: {name: t, output_dir: out, seed: 3, max_steps: 10}
        optim: {lr: 0.001, warmup_steps: 2}
        """) + extra)
    return run


def test_run_config_loads_references_and_overrides(tmp_path):
    config = load_run_config(write_run(tmp_path), ["optim.lr=3e-4", "checkpoint.keep_every=5", "run.name=other"])
    assert config.optim.lr == 3e-4 and config.checkpoint.keep_every == 5 and config.run.name == "other"
    assert config.model == {"name": "tiny"} and config.deepspeed["zero_optimization"]["stage"] == 2
    ds = deepspeed_config(config, micro_batch_size=8)
    assert ds["gradient_clipping"] == 1.0 and ds["bf16"] == {"enabled": True} and ds["train_micro_batch_size_per_gpu"] == 8
    same = load_run_config(write_run(tmp_path), ["optim.lr=3e-4", "logging.every_steps=1"])
    assert same.fingerprint() == config.fingerprint()
    assert load_run_config(write_run(tmp_path)).fingerprint() != config.fingerprint()


@pytest.mark.parametrize("extra, overrides, message", [
    ("optim: {lrr: 1}\n", [], "optim.lrr: unknown key"),
    ("", ["optim.lr=fast"], "optim.lr: expected float"),
    ("", ["optim.precision=fp8"], "optim.precision: must be one of"),
    ("", ["checkpoint.every_steps=0"], "checkpoint.every_steps: must be >= 1"),
    ("", ["model=missing.yaml"], "model: names missing.yaml"),
    ("", ["deepspeed.gradient_clipping=0.5"], "deepspeed.gradient_clipping: set by the run config"),
    ("", ["optim.lr"], "expected key=value"),
])
def test_run_config_errors_name_the_key(tmp_path, extra, overrides, message):
    run = write_run(tmp_path)
    if extra:
        run.write_text(run.read_text().replace("optim: {lr: 0.001, warmup_steps: 2}\n", extra))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        load_run_config(run, overrides)
    assert str(run) in str(error.value)


def test_rng_capture_restores_every_generator(tmp_path):
    rng_state.seed_everything(11)
    np.random.randn()  # numpy's cached Gaussian is part of its state
    torch.save(rng_state.capture(), tmp_path / "rng.pt")
    first = (random.random(), np.random.rand(), np.random.randn(), torch.rand(2))
    saved = torch.load(tmp_path / "rng.pt", weights_only=True)  # tensors and plain types only
    rng_state.restore(saved)
    again = (random.random(), np.random.rand(), np.random.randn(), torch.rand(2))
    assert first[:3] == again[:3] and torch.equal(first[3], again[3])


def test_first_signal_requests_checkpoint_second_exits_at_once(tmp_path):
    script = tmp_path / "sig.py"
    script.write_text(textwrap.dedent("""\
        import os, signal, sys, time
        from training.runtime.signals import PreemptionHandler
        handler = PreemptionHandler(["USR1", "SIGTERM"]).install()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert handler.requested and handler.received == signal.SIGUSR1
        print("requested", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        print("not reached")
        """))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == IMMEDIATE_EXIT_CODE
    assert result.stdout.strip() == "requested"
    with pytest.raises(ValueError, match="unknown signal name .NOPE. in guard.signals"):
        PreemptionHandler(["NOPE"])


def test_retention_keeps_last_k_and_every_mth():
    assert retained_steps([10, 20, 30, 40, 50, 60], keep_last=2, keep_every=20) == {20, 40, 50, 60}
    assert retained_steps([10, 20, 30], keep_last=1, keep_every=None) == {30}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def single_rank_deepspeed():
    import deepspeed
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    deepspeed.init_distributed(dist_backend="gloo")
    yield deepspeed
    torch.distributed.destroy_process_group()


def make_engine(deepspeed, seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_clipping": 1.0, "zero_optimization": {"stage": 2},
              "bf16": {"enabled": True}, "steps_per_print": 10**9}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def train_step(engine):
    x = torch.linspace(-1, 1, 8).reshape(2, 4).to(torch.bfloat16)
    loss = engine(x).float().pow(2).mean()
    engine.backward(loss)
    engine.step()


class Holder:
    """A stateful object as the checkpoint manager sees one."""

    def __init__(self, state: dict):
        self.state = state

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = state


def test_checkpoint_manager_commits_prunes_and_reloads(tmp_path, single_rank_deepspeed):
    engine = make_engine(single_rank_deepspeed, seed=0)
    holder = Holder({})
    manager = CheckpointManager(tmp_path, engine, {"trainer": holder}, rank=0, world_size=1, keep_last=2, keep_every=2)
    for step in range(1, 6):
        train_step(engine)
        holder.state = {"step": step, "data": [step]}
        manager.save(step, fingerprint="abc")
    assert [c.step for c in complete_checkpoints(tmp_path)] == [2, 4, 5]
    assert (tmp_path / "latest").read_text() == tag_for(5)
    expected = {n: p.detach().clone() for n, p in engine.module.named_parameters()}

    # A save killed before its commit leaves a folder without a marker: never chosen.
    partial = tmp_path / tag_for(6)
    partial.mkdir()
    (partial / "mp_rank_00_model_states.pt").write_bytes(b"half")
    info = find_resumable(tmp_path, "auto")
    assert info.step == 5 and info.world_size == 1 and info.fingerprint == "abc"
    # The marker lists every file of the checkpoint with its size and sha256.
    assert set(info.files) == {p.name for p in info.path.iterdir() if p.name != MARKER}
    state_file = info.path / rank_state_name(0)
    assert info.files[state_file.name] == {"size": state_file.stat().st_size,
                                           "sha256": hashlib.sha256(state_file.read_bytes()).hexdigest()}

    fresh = make_engine(single_rank_deepspeed, seed=1)
    fresh_holder = Holder({})
    assert not torch.equal(next(fresh.module.parameters()), next(iter(expected.values())))
    fresh_manager = CheckpointManager(tmp_path, fresh, {"trainer": fresh_holder}, rank=0, world_size=1,
                                      keep_last=2, keep_every=2)
    fresh_manager.load(info)
    assert fresh_holder.state == {"step": 5, "data": [5]}
    assert safe_load.load(state_file) == {"trainer": fresh_holder.state}
    for name, param in fresh.module.named_parameters():
        assert torch.equal(param, expected[name]), name

    # Both engines take the same next step: optimizer state came back too.
    train_step(engine)
    train_step(fresh)
    for (name, a), b in zip(engine.module.named_parameters(), fresh.module.parameters()):
        assert torch.equal(a, b), name

    # The next save replaces the partial folder of the same step.
    fresh_holder.state = {"step": 6}
    fresh_manager.save(6, fingerprint="abc")
    assert (partial / MARKER).exists() and (partial / rank_state_name(0)).exists()
    assert [c.step for c in complete_checkpoints(tmp_path)] == [2, 4, 5, 6]
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        find_resumable(tmp_path, str(tmp_path / "nowhere"))
