"""Fixtures shared by the whole suite."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from data_pipeline.demo_corpus import DemoCorpusSpec, generate

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    """A small demo corpus (raw files), generated once per test session."""
    out = tmp_path_factory.mktemp("demo_corpus")
    generate(DemoCorpusSpec(out, images=80, videos=12, seed=7, eval_fraction=0.25), progress=False)
    return out


@pytest.fixture(scope="session")
def engine_shards(demo_corpus, tmp_path_factory) -> Path:
    """Train shards (image, RefCOCO region, video) of the demo corpus and its tokenizer."""
    from engine_support import build_demo_shards

    return build_demo_shards(demo_corpus, tmp_path_factory.mktemp("engine_shards"))


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real two-node Slurm cluster on this machine (tests/slurm_cluster.py), shared by the
    session; skipped, with the reason, only where the machine cannot run one."""
    from slurm_cluster import SlurmCluster, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no test Slurm cluster: {reason}")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@dataclass(frozen=True)
class TrainedDemo:
    root: Path    # the demo data: ROOT/runs/demo/{corpus,shards}
    config: Path  # the run config the run used
    train: Path   # its output_dir: checkpoints/, metrics.jsonl
    export: Path  # the model folder written at the end of the run (run.export_on_finish)


def _demo_run_config(root: Path) -> Path:
    """configs/runs/demo.yaml with its data under ROOT/runs/demo and its output in ROOT/train."""
    run = yaml.safe_load((REPO_ROOT / "configs/runs/demo.yaml").read_text())
    configs = REPO_ROOT / "configs/runs"
    data = yaml.safe_load((configs / run["data"]).read_text())
    data["root"] = str(root)  # the data config names runs/demo/... below its root
    run["data"] = data
    run["model"] = str((configs / run["model"]).resolve())
    run["deepspeed"] = str((configs / run["deepspeed"]).resolve())
    run["run"]["output_dir"] = str(root / "train")
    run["run"]["export_on_finish"] = True
    run["eval"] = {**run["eval"], **{key: [str(root / pattern) for pattern in run["eval"][key]]
                                     for key in ("image_shards", "region_shards", "video_shards")}}
    # Held-out evaluation once, after the last step; no checkpoint but the final one.
    run["eval"]["every_steps"] = run["run"]["max_steps"]
    run["checkpoint"]["every_steps"] = run["run"]["max_steps"]
    run.setdefault("logging", {})["tensorboard"] = False
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(run, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory) -> TrainedDemo:
    """The demo run (configs/runs/demo.yaml: the demo model, 2 CPU ranks, ZeRO-2) trained once per
    session from random weights on the data `make demo` builds (scripts/demo_data.sh), ending
    with its model folder. The learning test reads its figures; fine-tuning and zero-shot tests
    start from its export."""
    from engine_support import Ranks

    root = tmp_path_factory.mktemp("trained_demo")
    subprocess.run(["bash", str(REPO_ROOT / "scripts/demo_data.sh"), str(root / "runs/demo")], check=True,
                   cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
    config = _demo_run_config(root)
    ranks = Ranks(config, 2, "--resume", "none", log_dir=root)
    codes = ranks.wait(timeout=1200)
    assert codes == [0, 0], ranks.output()[-4000:]
    return TrainedDemo(root, config, root / "train", root / "train/export")
