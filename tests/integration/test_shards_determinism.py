"""Shards are byte-identical for any number of workers, and after a SIGKILL plus --resume."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from shards_support import build, shard_digests

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLES = 400
PER_SHARD = 8
OPTIONS = ("--prefix", "many", "--samples-per-shard", str(PER_SHARD), "--max-image-side", "96")


@pytest.fixture(scope="module")
def many_images(demo_corpus, tmp_path_factory) -> tuple[Path, Path]:
    """400 image entries (links to the 80 demo images), one missing file, so that a build takes
    long enough to be killed part-way and rejections must survive the resume."""
    root = tmp_path_factory.mktemp("many")
    media = root / "media"
    (media / "sources").mkdir(parents=True)
    captions = {}
    for line in (demo_corpus / "annotations/captions_train.jsonl").read_text().splitlines():
        entry = json.loads(line)
        captions[entry["image"]] = entry["captions"]
    sources = sorted(captions)
    for name in sources:  # the links must stay inside --media-root
        shutil.copy(demo_corpus / "images" / name, media / "sources" / name)
    with open(root / "many.jsonl", "w") as f:
        for i in range(SAMPLES):
            name = sources[i % len(sources)]
            if i != 123:
                os.symlink(Path("sources") / name, media / f"s{i:04d}.jpg")
            f.write(json.dumps({"image": f"s{i:04d}.jpg", "captions": captions[name]}) + "\n")
    return root / "many.jsonl", media


@pytest.fixture(scope="module")
def reference(many_images, tmp_path_factory) -> Path:
    annotations, media = many_images
    out = tmp_path_factory.mktemp("reference")
    assert build(out, [("jsonl", annotations)], media, *OPTIONS, "--workers", "1") == 0
    return out


def test_one_and_two_workers_write_identical_shards(reference, many_images, tmp_path):
    annotations, media = many_images
    assert build(tmp_path, [("jsonl", annotations)], media, *OPTIONS, "--workers", "2") == 0
    digests = shard_digests(tmp_path)
    assert len(digests) == SAMPLES // PER_SHARD
    assert digests == shard_digests(reference)
    assert (tmp_path / "rejected.jsonl").read_bytes() == (reference / "rejected.jsonl").read_bytes()
    with tarfile.open(tmp_path / "many-000000.tar") as tar:
        # No build time, owner or umask leaks into the bytes.
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in tar.getmembers()} == {(0, 0, 0, "", "", 0o444)}
    ours, theirs = (json.loads((d / "manifest.json").read_text()) for d in (tmp_path, reference))
    assert ours["shards"] == theirs["shards"] and ours["totals"]["samples"] == SAMPLES - 1


def test_sigkill_then_resume_gives_identical_shards_without_redoing_finished_ones(reference, many_images, tmp_path):
    annotations, media = many_images
    argv = [sys.executable, "-m", "data_pipeline.shards", "build", "--format", "jsonl", "--annotations", str(annotations),
            "--media-root", str(media), "--output", str(tmp_path), *OPTIONS]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(argv + ["--workers", "2"], cwd=REPO_ROOT, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("many-*.tar"))) < 2:
        assert process.poll() is None and time.monotonic() < deadline, "build ended before it could be killed"
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)  # the whole group, workers included, as a pre-emption would
    process.wait()
    expected = shard_digests(reference)
    survivors = shard_digests(tmp_path)
    assert 2 <= len(survivors) < len(expected)
    assert all(expected[name] == digest for name, digest in survivors.items()), "a partial shard took a final name"
    assert not (tmp_path / "manifest.json").exists()
    identity = {name: (tmp_path / name).stat().st_ino for name in survivors}

    resumed = subprocess.run(argv + ["--workers", "1", "--resume"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "samples/s" in resumed.stderr  # the progress bar
    assert shard_digests(tmp_path) == expected
    assert {name: (tmp_path / name).stat().st_ino for name in survivors} == identity
    assert (tmp_path / "rejected.jsonl").read_bytes() == (reference / "rejected.jsonl").read_bytes()
    assert [json.loads(l)["media"] for l in (tmp_path / "rejected.jsonl").read_text().splitlines()] == ["s0123.jpg"]
    assert not list(tmp_path.glob(".*.partial"))
