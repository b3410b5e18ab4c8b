"""The registry against a real `mlflow server` on 127.0.0.1, driven the way a user would:
register, promote, list, pull, sample, and MLflow's own loaders. The training folders are deleted
before anything is pulled, so nothing can come from them. Pulling, sampling by URI and MLflow's
loaders run as separate processes (nothing can leak from the test process into them); the other
commands run in-process through the same CLI entry point, because each process start costs the
2-core suite ~8 s.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _ganforge() -> list[str]:
    """The installed `ganforge` console script beside this interpreter."""
    return [str(Path(sys.executable).with_name("ganforge"))]


def _sh(argv: list[str], env: dict, cwd: Path) -> str:
    p = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{argv} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def _here(argv: list[str], env: dict, cwd: Path) -> str:
    """`ganforge ARGV` through jobs.cli.main in this process, with ENV and CWD for the call."""
    import contextlib
    import io

    from jobs import cli

    saved, here = dict(os.environ), os.getcwd()
    out = io.StringIO()
    try:
        os.environ.update(env)
        os.chdir(cwd)
        with contextlib.redirect_stdout(out):
            rc = cli.main(argv)
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(saved)
    assert rc == 0, f"{argv} -> {rc}\n{out.getvalue()}"
    return out.getvalue()


def _user_flow(server: str, run_id: str, name: str, tmp: Path) -> None:
    """What a user does in a fresh shell: register, promote, list, pull, sample, load."""
    gf = _ganforge()
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "GANFORGE_HOME": str(tmp / "home")}
    shell = tmp / "shell"
    shell.mkdir()
    assert "version 1" in _here(["register", run_id, "--name", name, "--alias", "candidate"], env, shell)
    _here(["promote", name, "1", "--alias", "champion"], env, shell)
    listing = _here(["models", name], env, shell)
    assert "candidate,champion" in listing and run_id[:12] in listing
    _sh([*gf, "pull", f"models:/{name}@champion", "--out", "d"], env, shell)
    assert "MODEL_CARD.md" in os.listdir(shell / "d")
    # The pulled folder needs no server at all.
    offline = {**env, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    _here(["sample", "d", "--n", "16", "--seed", "3", "--out", "g_dir.png"], offline, shell)
    _sh([*gf, "sample", f"models:/{name}@champion", "--n", "16", "--seed", "3", "--out", "g_uri.png"], env, shell)
    assert (shell / "g_dir.png").read_bytes() == (shell / "g_uri.png").read_bytes()

    # MLflow's standard loaders, with pickle deserialization switched off.
    code = (
        "import sys, mlflow, numpy as np, torch\n"
        f"uri = 'models:/{name}@champion'\n"
        "np.save(sys.argv[1], mlflow.pyfunc.load_model(uri).predict({'n': 4, 'seed': 3}))\n"
        "G = mlflow.pytorch.load_model(uri)\n"
        "x = G(torch.zeros(2, 16), torch.tensor([0, 1]))\n"
        "assert x.shape == (2, 3, 16, 16) and x.abs().max() <= 1\n")
    _sh([sys.executable, "-c", code, "pyfunc.npy"], {**env, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}, shell)
    from pipeline.families.generator import load_folder

    want = load_folder(shell / "d").sample(4, seed=3).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(np.load(shell / "pyfunc.npy"), want)


def test_server_flow_after_real_training(mlflow_server, ray_session, smoke_shards, tmp_path):
    from jobs.train import run_training
    from pipeline import config as C

    cfg = C.load("smoke", [f"train.run_name=reg-{uuid.uuid4().hex[:8]}", f"train.storage_path={tmp_path / 'ray'}",
                           f"tracking.uri={mlflow_server}", "tracking.register=false",
                           # What is tested is the server flow; 2-worker runs are tested elsewhere,
                           # and each process started costs seconds on 2 cores.
                           "scaling.num_workers=1", "data.loader_workers=0"])
    s = run_training(cfg)
    assert s.tracking_uri == mlflow_server and s.steps == 8
    shutil.rmtree(tmp_path / "ray")
    name = f"trained-{uuid.uuid4().hex[:6]}"
    _user_flow(mlflow_server, s.mlflow_run_id, name, tmp_path)
    from pipeline.tracking import registry

    mv = registry.promote(name, 1, "champion", tracking_uri=mlflow_server)
    assert mv.tags["ganforge.step"] == "8" and mv.tags["ganforge.data_sha256"] not in ("", "unknown")
