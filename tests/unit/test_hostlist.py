"""Host-list expansion against Slurm's own `scontrol show hostnames`."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from launch.hostlist import expand_hostlist

CASES = {
    "node[01-03,07]": ["node01", "node02", "node03", "node07"],
    "gpu-a[1-2],gpu-b3": ["gpu-a1", "gpu-a2", "gpu-b3"],
    "r[1-2]-n[01-02]": ["r1-n01", "r1-n02", "r2-n01", "r2-n02"],
    "single": ["single"],
    "n[8-11]": ["n8", "n9", "n10", "n11"],
    "a[098-101]": ["a098", "a099", "a100", "a101"],
}


@pytest.mark.parametrize("compressed, expected", CASES.items())
def test_expansion_matches_the_written_down_answer(compressed, expected):
    assert expand_hostlist(compressed) == expected


@pytest.mark.parametrize("compressed", list(CASES) + ["x[1-3,5,10-12],y[7]", "c[1-2]-g[0-1]"])
def test_expansion_matches_scontrol(compressed, tmp_path):
    if shutil.which("scontrol") is None:
        pytest.fail("scontrol is missing: `make test` installs slurm-wlm as root (system-packages.txt)")
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=t\nSlurmctldHost=localhost\nNodeName=n1 CPUs=1\nPartitionName=p Nodes=n1\n")
    result = subprocess.run(["scontrol", "show", "hostnames", compressed], capture_output=True, text=True,
                            env={"SLURM_CONF": str(conf), "PATH": "/usr/bin:/bin"}, check=True)
    assert expand_hostlist(compressed) == result.stdout.split()


@pytest.mark.parametrize("bad", ["n[1-", "n]1[", "n[a-b]", "n[3-1]", "a[1-2]x"])
def test_malformed_lists_are_errors(bad):
    with pytest.raises(ValueError, match="host list"):
        expand_hostlist(bad)
