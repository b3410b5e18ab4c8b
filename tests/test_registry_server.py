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
ROOT = Path(__file__).resolve().parents[1]


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


def test_ganforge_train_in_a_terminal_tracks_to_a_server_then_the_registry_flow(
        mlflow_server, ray_session, smoke_shards, tmp_path):
    """`ganforge train` as a person runs it, on a pseudo-terminal, joining the session's Ray and
    tracking to a real `mlflow server`; then what a user does with the run in a fresh shell.
    One Ray fit serves the terminal, tracking, in-loop evaluation and registry checks: every fit
    costs ~20 s of start-up on 2 cores."""
    import re

    from mlflow.tracking import MlflowClient

    from pipeline import config as C
    from pipeline.engine import checkpoint
    from proc_session import in_a_terminal

    # The terminal: a start line, one progress line (redrawn in place), the summary; none of
    # Ray's per-report or blank worker lines, no MLflow INFO or download bars.
    name = f"t-{uuid.uuid4().hex[:8]}"
    store = tmp_path / "ray"
    rc, drawn = in_a_terminal([
        sys.executable, "-m", "jobs.cli", "train", "smoke", f"train.run_name={name}",
        "eval.every=4", "eval.metrics=[fid,kid,coverage]", "eval.n_fake=64", "eval.n_real=128",
        "eval.kid_subsets=4", "eval.kid_subset_size=32", "eval.batch_size=16",
        "--address", ray_session.get_runtime_context().gcs_address,
        f"tracking.uri={mlflow_server}", f"train.storage_path={store}"], cwd=ROOT)
    # Ray's own daemons (a raylet's "disk over 95% full", say) print to the driver's terminal from
    # a thread, at the cursor: such a message can start on the bar's line. It is Ray's, not ours.
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", drawn)
    plain = re.sub(r"\((raylet|gcs_server|autoscaler|monitor)[^)]*\)", "\n", plain)
    lines = [ln for ln in re.split(r"[\r\n]+", plain) if ln.strip()]
    assert rc == 0, drawn[-3000:]
    assert lines[0].startswith(f"[ganforge] run {name}: 8 steps on 2 workers"), lines[:3]
    bars = [ln for ln in lines if ln.startswith("train ")]
    assert bars and re.search(r" 8/8 \[[0-9:]+<[0-9:]+\], loss_d -?[0-9.]+ loss_g -?[0-9.]+, [0-9]+ img/s",
                              bars[-1]), bars
    assert all(len(ln) <= 120 for ln in bars)                     # one terminal line, not wrapped
    for noise in ("Reporting training result", "RayTrainWorker", "pid=", " INFO ", "Downloading artifacts",
                  "Token authentication", "Created version", "Traceback"):
        assert noise not in drawn, (noise, drawn[-3000:])
    summary = "\n".join(lines[lines.index(next(ln for ln in lines if ln.startswith(f"run {name}: 8 steps"))):])
    run_id = re.search(r"MLflow run id : (\w+)", summary).group(1)
    assert re.search(r"registered    : models:/ganforge-dcgan/\d+", summary), summary
    ckpt = re.search(r"checkpoint    : (\S+)", summary).group(1)

    # What the run tracked.
    client = MlflowClient(mlflow_server)
    history = lambda key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]  # noqa: E731
    artifacts = lambda path: [a.path for a in client.list_artifacts(run_id, path)]            # noqa: E731
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["loss.kind"] == "hinge" and run.data.params["model.name"] == "dcgan"
    assert [st for st, _ in history("loss_d")] == [2, 4, 6, 8]
    assert all(v > 0 for _, v in history("images_per_s"))
    assert history("skipped_samples")[-1][1] == 0
    assert artifacts("samples") == ["samples/step_0000004.png", "samples/step_0000008.png"]
    assert "sample grid   : " in summary and summary.split("sample grid   : ")[1].split()[0].endswith(
        "samples/step_0000008.png")
    import yaml
    saved = yaml.safe_load((store / name / "resolved_config.yaml").read_text())
    assert C.from_dict(saved).train.steps == 8
    assert "resolved_config.yaml" in artifacts(None)
    assert {"checkpoint/state.pt", "checkpoint/meta.json"} <= set(artifacts("checkpoint"))
    state = checkpoint.load(ckpt)
    assert state["step"] == 8 and len(state["data_positions"]) == 2

    # In-loop evaluation: curves under a key that names the extractor, and its protocol as tags.
    keys = set(run.data.metrics)
    fid_key = next(k for k in keys if k.endswith("/fid"))
    assert "ganforge-small-shapestack" in fid_key          # never mistaken for a standard FID
    assert [st for st, _ in history(fid_key)] == [4, 8]
    assert [st for st, _ in history("eval/coverage_modes")] == [4, 8]
    assert any(k.endswith("/kid_mean") for k in keys)
    tags = run.data.tags
    assert tags["eval.extractor"] == "ganforge-small-shapestack" and tags["eval.standard"] == "false"
    assert tags["eval.n_fake"] == "64" and len(tags["eval.extractor_sha256"]) == 64
    assert tags["eval.ref_stats_sha256"] not in ("", "none")
    assert any(a.path.startswith("refstats/") for a in client.list_artifacts(run_id, "refstats"))
    best = checkpoint.load(store / name / "best_checkpoint")
    assert best["step"] in (4, 8)

    # The registry flow needs only the server: the Ray run folder goes first.
    shutil.rmtree(store)
    model = f"trained-{uuid.uuid4().hex[:6]}"
    _user_flow(mlflow_server, run_id, model, tmp_path)
    from pipeline.tracking import registry

    mv = registry.promote(model, 1, "champion", tracking_uri=mlflow_server)
    assert mv.tags["ganforge.step"] == "8" and mv.tags["ganforge.data_sha256"] not in ("", "unknown")
