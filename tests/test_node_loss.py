"""Losing a node mid-run: Ray Train restarts from the latest checkpoint on the node that is left
(elastic: scaling.min_workers=1), the run reaches its step count and no checkpoint is lost."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.engine import checkpoint
from proc_session import stop_session

pytestmark = pytest.mark.slow


def test_training_survives_losing_a_node(smoke_shards, tmp_path):
    # Its own Ray (a 3-node Cluster) in its own process and temp dir; short: socket paths < 107 chars.
    ray_tmp = tempfile.mkdtemp(prefix="rnl", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("node_loss_run.py")),
                             str(tmp_path), str(smoke_shards)], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=420)
    finally:
        left = stop_session(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        assert left == [], f"processes of the test cluster still alive: {left}"
    assert proc.returncode == 0 and (tmp_path / "result.json").is_file(), out[-4000:]
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["steps"] == 24
    # The node went away after the first registered checkpoint (step 4) and before the last.
    assert 1 <= len(res["removed_after"]) < 6
    resumed = re.findall(r"resumed at step (\d+) of 24", out)
    assert resumed and int(resumed[0]) >= 4, out[-4000:]
    # Every checkpoint Ray Train registered is there and loads (sha256 checked): steps 4, 8, ...,
    # 24, each once; the last ones come from the single worker left. (A folder rank 0 uploaded
    # but Ray never registered, cut off by the node loss, may also be there; it is not one.)
    run_dir = Path(res["run_dir"])
    snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    names = [c["checkpoint_dir_name"] for c in snap["checkpoint_results"]]
    assert set(names) <= {p.name for p in run_dir.glob("checkpoint_2*")}
    states = [checkpoint.load(run_dir / n) for n in names]
    assert [s["step"] for s in states] == [4, 8, 12, 16, 20, 24]
    assert len(states[0]["data_positions"]) == 2 and len(states[-1]["data_positions"]) == 1
    assert Path(res["checkpoint"]) == run_dir / names[-1]
