"""Helpers for the engine tests: demo shards, small run configs, and ranks started the way
srun starts them (one process each, RANK / WORLD_SIZE / MASTER_* in the environment)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from data_pipeline.text.demo_tokenizer import build_demo_tokenizer
from shards_support import build

REPO_ROOT = Path(__file__).resolve().parents[1]


def build_demo_shards(corpus: Path, out: Path) -> Path:
    """Image (captions + boxes + phrases), RefCOCO region and video train shards of the demo
    corpus, split small enough that 3 ranks each hold a shard, and the demo tokenizer."""
    ann = corpus / "annotations"
    assert build(out / "image", [("coco-captions", ann / "coco_captions_train.json"),
                                 ("coco-instances", ann / "coco_instances_train.json"),
                                 ("vg-regions", ann / "vg_regions_train.json")],
                 corpus / "images", "--prefix", "img", "--samples-per-shard", "10") == 0
    assert build(out / "region", [("refcoco", ann / "refcoco/refs(unc).p")], corpus / "images",
                 "--prefix", "ref", "--refcoco-split", "train", "--samples-per-shard", "10") == 0
    assert build(out / "video", [("video-jsonl", ann / "videos_train.jsonl")], corpus / "videos",
                 "--prefix", "vid", "--samples-per-shard", "3") == 0
    build_demo_tokenizer(corpus, out / "tokenizer")
    return out


def data_config(shards: Path, image_batch: int = 4, region_batch: int = 4, video_batch: int = 2,
                video_ratio: float = 0.5, kinds: tuple[str, ...] = ("image_text", "region", "video_text")) -> dict:
    corpora = {
        "image_text": [{"name": "images", "kind": "image_text", "shards": f"{shards}/image/*.tar",
                        "batch_size": image_batch, "options": {"rand_augment": False}}],
        "region": [{"name": "image_regions", "kind": "region", "shards": f"{shards}/image/*.tar", "weight": 2.0,
                    "batch_size": region_batch, "options": {"max_regions": 4}},
                   {"name": "refcoco", "kind": "region", "shards": f"{shards}/region/*.tar", "weight": 1.0,
                    "batch_size": region_batch}],
        "video_text": [{"name": "videos", "kind": "video_text", "shards": f"{shards}/video/*.tar",
                        "batch_size": video_batch, "options": {"frames": 2}}],
    }
    return {
        "seed": 5, "image_res": 64, "patch_size": 16,
        "text": {"tokenizer": str(shards / "tokenizer"), "max_tokens": 24},
        "kinds": {k: {"ratio": video_ratio if k == "video_text" else 1.0} for k in kinds},
        "loader": {"num_workers": 1, "shuffle_buffer": 16, "prefetch_factor": 2},
        "corpora": [c for k in kinds for c in corpora[k]],
    }


def tiny_model() -> dict:
    """The tiny model with a vocabulary the size of the demo model's (128): the test tokenizer has
    80 tokens, and BERT's 30522-row MLM head would be most of a tiny step on CPU."""
    model = yaml.safe_load((REPO_ROOT / "configs/model/tiny.yaml").read_text())
    model["text"]["vocab_size"] = 128
    return model


def write_run_config(directory: Path, shards: Path, zero_stage: int = 2, max_steps: int = 40, **sections) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    data = sections.pop("data", None) or data_config(shards)
    run = {
        "model": tiny_model(),
        "data": data,
        "deepspeed": str(REPO_ROOT / f"configs/deepspeed/zero{zero_stage}.json"),
        "run": {"name": "test", "output_dir": str(directory / "out"), "seed": 3, "max_steps": max_steps},
        "optim": {"lr": 0.002, "warmup_steps": 5, "precision": "bf16"},
        "checkpoint": {"every_steps": 20, "keep_last": 3},
        "logging": {"every_steps": 1, "tensorboard": False},
    }
    for key, value in sections.items():
        run.setdefault(key, {}).update(value)
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(run, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ranks:
    """WORLD processes of `python -m training.pretrain` (or of MODULE), as a launcher would start them,
    in the folder CWD."""

    def __init__(self, config: Path, world: int, *args: str, log_dir: Path | None = None, env: dict | None = None,
                 module: str = "training.pretrain", cwd: Path = REPO_ROOT):
        port = free_port()
        self.log_dir = log_dir or config.parent
        self.procs = []
        self.logs = []
        for rank in range(world):
            environ = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                           MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DS_ACCELERATOR="cpu",
                           OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT),
                           # The venv's ninja: DeepSpeed's op cache is keyed on it (see scripts/run_tests.sh).
                           PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
            environ.update(env or {})
            log = open(self.log_dir / f"rank{rank}-{port}.log", "w")
            self.logs.append(log)
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", module, "--config", str(config), *args],
                cwd=cwd, env=environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def wait(self, timeout: float = 600) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        try:
            for proc in self.procs:
                codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
        finally:
            self.kill()
        return codes

    def signal(self, sig: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, sig)

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in self.logs:
            log.close()

    def output(self) -> str:
        return "\n".join(Path(log.name).read_text(errors="replace") for log in self.logs)


def run_ranks(config: Path, world: int, *args: str, timeout: float = 600, env: dict | None = None) -> tuple[list[int], str]:
    ranks = Ranks(config, world, *args, env=env)
    codes = ranks.wait(timeout)
    return codes, ranks.output()


def run_rank_scripts(script: Path, *args: str, world: int = 2, timeout: float = 600) -> None:
    """Runs SCRIPT (a test's own rank program: it builds the trainer itself) as WORLD ranks with
    the environment a launcher gives them; fails with the ranks' output unless all exit 0."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT),
                   PATH=f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        procs.append(subprocess.Popen([sys.executable, str(script), *(a.format(rank=rank) for a in args)],
                                      cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [proc.communicate(timeout=timeout)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * world, "\n".join(outputs)[-6000:]


def losses_by_step(out_dir: Path) -> dict[int, float]:
    """The training loss per step from metrics.jsonl; a step logged twice (before a crash and
    again after the resume) keeps its last value."""
    losses = {}
    for line in (out_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["kind"] == "train":
            losses[row["step"]] = row["loss"]
    return losses


def wait_for(predicate, timeout: float, what: str, ranks: Ranks | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if ranks is not None and any(p.poll() is not None for p in ranks.procs):
            raise AssertionError(f"a rank ended while waiting for {what}:\n{ranks.output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f":\n{ranks.output()}" if ranks else ""))
        time.sleep(0.05)


def finetune_preset(data_root: Path, directory: Path, task: str) -> Path:
    """configs/finetune/TASK_demo.yaml on the demo data under DATA_ROOT, writing into DIRECTORY/out
    and logging every step; the preset is otherwise unchanged."""
    import yaml

    preset = yaml.safe_load((REPO_ROOT / f"configs/finetune/{task}_demo.yaml").read_text())
    preset["deepspeed"] = str(REPO_ROOT / "configs/deepspeed" / Path(preset["deepspeed"]).name)
    preset["data"]["root"] = str(data_root)
    for held_out in preset["eval"].get("sets", []):
        held_out["shards"] = [str(data_root / pattern) for pattern in held_out["shards"]]
    for key in ("image_shards", "region_shards", "video_shards"):
        if key in preset["eval"]:
            preset["eval"][key] = [str(data_root / pattern) for pattern in preset["eval"][key]]
    preset["run"]["output_dir"] = str(directory / "out")
    preset["logging"]["every_steps"] = 1
    path = directory / f"{task}.yaml"
    path.write_text(yaml.safe_dump(preset, sort_keys=False))
    return path


def finetune_ranks(config: Path, model_folder: Path, task: str, *args: str) -> Ranks:
    """`python -m training.finetune` on 2 ranks: TASK from MODEL_FOLDER with the run config CONFIG."""
    return Ranks(config, 2, "--task", task, "--model", str(model_folder), *args, module="training.finetune")
