"""bench/gpu_suite.sh in its tiny CPU mode, as the GPU machine will run it (one shell command):
the engine's step for BigGAN, ProGAN and StyleGAN2, the loader, coverage after fixed minutes,
one table and one JSON, and nothing imported that a bare torch machine lacks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What bench/fetch_wheels.sh brings, what the GPU machine has beside torch, and our own code.
ALLOWED = {"webdataset", "braceexpand", "pydantic", "pydantic_core", "annotated_types", "typing_inspection",
           "typing_extensions", "yaml", "numpy", "PIL", "models", "pipeline", "jobs",
           "step_throughput", "data_throughput", "quality", "clocked"}


def test_gpu_suite_tiny_mode(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "GANFORGE_HOME": str(tmp_path / "home")}
    p = subprocess.run(["bash", "bench/gpu_suite.sh", "--tiny", "--out", str(tmp_path / "out")], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "gpu_suite.json").read_text())
    rows = res["step"]["rows"]
    assert [r["arm"].split("+")[0] for r in rows] == ["biggan32_cpu", "progan32", "stylegan2_32"]
    for r in rows:
        assert r["img_s"] > 0 and r["gflop_per_img"] > 0 and 0 < r["tflop_s"] and r["compile"] == "off"
    assert "progan 32 px" in rows[1]["what"]            # ProGAN timed at its last stage, not 4 px
    # StyleGAN2's lazy R1 and path-length phases are in the FLOPs (every 2 steps in tiny mode).
    assert rows[0]["profile"] and all(0 <= p["share"] <= 1 for p in rows[0]["profile"])
    assert res["data"]["img_s"] > 0 and res["data"]["ratio"] > 0
    q = res["quality"]
    assert q and all(0 <= r["modes"] <= 1000 and r["kl"] >= 0 for r in q)
    assert set(res["imports"]) <= ALLOWED, set(res["imports"]) - ALLOWED   # no ray, mlflow, pyarrow
    table = p.stdout.split("\n\n")[-1]
    assert "img/s" in table and "loader:" in table and "coverage pacgan32" in table
