"""An installed package (not a checkout) still finds its configs: the wheel carries them, and
`create_model("tiny")` works from a prefix where nothing of the checkout is importable."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_an_installed_wheel_carries_the_configs_and_builds_a_model_by_name(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheels")], check=True, cwd=tmp_path)
    wheel, = (tmp_path / "wheels").glob("x2vlm_pretrain-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for config in sorted(REPO.glob("configs/*/*")):
        assert any(n.endswith(f"/share/x2vlm-pretrain/{config.relative_to(REPO).as_posix()}") for n in names), config

    # A prefix of its own: the wheel installed there, the project's dependencies visible through a
    # .pth file (which does not run the editable install's finder), the checkout nowhere on the path.
    prefix = tmp_path / "prefix"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--ignore-installed", "-q", "--prefix", str(prefix),
                    str(wheel)], check=True, cwd=tmp_path)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    script = ("import training.model as m; print(m.__file__); print(m.model_config_dir()); "
              "print(sum(p.numel() for p in m.create_model('tiny', load_pretrained=False).parameters()))")
    out = subprocess.run([str(prefix / "bin" / "python"), "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-3000:]
    module, config_dir, parameters = out.stdout.split()
    assert Path(module).is_relative_to(site) and Path(config_dir) == prefix / "share/x2vlm-pretrain/configs/model"
    assert int(parameters) > 0
