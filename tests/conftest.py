"""Fixtures shared by the whole suite."""
from __future__ import annotations

from pathlib import Path

import pytest

from data_pipeline.demo_corpus import DemoCorpusSpec, generate

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    """A small demo corpus (raw files), generated once per test session."""
    out = tmp_path_factory.mktemp("demo_corpus")
    generate(DemoCorpusSpec(out, images=80, videos=12, seed=7, eval_fraction=0.25), progress=False)
    return out


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
