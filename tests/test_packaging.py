"""A wheel built from the checkout carries every preset and search space: a non-editable
install runs `ganforge tune --space smoke_gp --dry-run` without the checkout on its path."""
from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
sys.path[:0] = [sys.argv[1]]                   # the wheel's files first, then the venv's packages
sys.path += json.loads(sys.argv[2])
from jobs.cli import main
import jobs
assert jobs.__file__.startswith(sys.argv[1]), jobs.__file__
sys.exit(main(["tune", "smoke", "--space", "smoke_gp", "--trials", "2", "--dry-run"]))
"""


def test_wheel_holds_presets_and_spaces_and_tune_dry_runs_from_it(tmp_path):
    # Built from a copy: an in-place build leaves build/ and *.egg-info in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "pipeline", "models", "jobs"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (ROOT / name).is_dir() else {}))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("ganforge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    presets = {p.name for p in (ROOT / "jobs" / "configs").glob("*.yaml")}
    spaces = {p.name for p in (ROOT / "jobs" / "configs" / "spaces").glob("*.yaml")}
    assert {n.split("/")[-1] for n in names if n.startswith("jobs/configs/") and n.count("/") == 2} == presets
    assert {n.split("/")[-1] for n in names if n.startswith("jobs/configs/spaces/")} == spaces
    target = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr[-2000:]
    out = subprocess.run([sys.executable, "-S", "-c", SCRIPT, str(target), json.dumps(site.getsitepackages())],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "loss.gp_weight" in out.stdout
