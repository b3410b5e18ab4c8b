"""Real Ray Train runs on 2 CPU workers: tracking, in-loop evaluation, failure recovery, resume."""
from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow.tracking import MlflowClient

from jobs.train import run_training
from pipeline.engine import checkpoint
from pipeline import config as C

pytestmark = pytest.mark.slow


def _cfg(tmp_path, *over):
    name = f"t-{uuid.uuid4().hex[:8]}"        # a reused name would silently resume
    return C.load("smoke", [f"train.run_name={name}", f"train.storage_path={tmp_path}", *over])


def _history(s, key):
    return [(m.step, m.value) for m in MlflowClient(s.tracking_uri).get_metric_history(s.mlflow_run_id, key)]


def _artifacts(s, path):
    return [a.path for a in MlflowClient(s.tracking_uri).list_artifacts(s.mlflow_run_id, path)]


def _in_a_terminal(argv: list[str], cwd, timeout_s: float = 400) -> tuple[int, str]:
    """Run `argv` on a pseudo-terminal of 120 x 40 (as a person would), in its own session;
    -> (exit code, everything it drew). A run past the timeout is stopped and fails the test."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import subprocess
    import termios
    import time

    from proc_session import stop_session

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, cwd=cwd,
                            start_new_session=True, close_fds=True)
    os.close(follower)
    out, deadline = b"", time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:          # the terminal closed: every writer has exited
                break
            if not chunk:
                break
            out += chunk
        else:
            stop_session(proc)
            pytest.fail(f"{argv[:4]} ran past {timeout_s} s; it drew:\n{out.decode(errors='replace')[-3000:]}")
        return proc.wait(timeout=60), out.decode(errors="replace")
    finally:
        os.close(leader)


def test_ganforge_train_in_a_terminal_shows_one_progress_line_and_tracks_everything(smoke_shards, tmp_path):
    # `ganforge train` as a person runs it, on a pseudo-terminal: a start line, one progress line
    # (redrawn in place), the summary; none of Ray's per-report or blank worker lines, no MLflow
    # INFO or download bars. The same run then checks tracking and the in-loop evaluation
    # (FID/KID/coverage on the EMA generator every 4 steps, best checkpoint kept): every Ray fit
    # costs ~20 s of start-up on 2 cores, so one fit serves both.
    import re
    import sys

    name = f"t-{uuid.uuid4().hex[:8]}"
    rc, drawn = _in_a_terminal([
        sys.executable, "-m", "jobs.cli", "train", "smoke", f"train.run_name={name}",
        "eval.every=4", "eval.metrics=[fid,kid,coverage]", "eval.n_fake=64", "eval.n_real=128",
        "eval.kid_subsets=4", "eval.kid_subset_size=32", "eval.batch_size=16",
        f"train.storage_path={tmp_path}"], cwd=Path(__file__).resolve().parents[1])
    lines = [ln for ln in re.split(r"[\r\n]+", re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", drawn)) if ln.strip()]
    assert rc == 0, drawn[-3000:]
    assert lines[0].startswith(f"[ganforge] run {name}: 8 steps on 2 workers"), lines[:3]
    bars = [ln for ln in lines if ln.startswith("train ")]
    assert bars and re.search(r" 8/8 \[[0-9:]+<[0-9:]+\], loss_d -?[0-9.]+ loss_g -?[0-9.]+, [0-9]+ img/s", bars[-1]), bars
    assert all(len(ln) <= 120 for ln in bars)                     # one terminal line, not wrapped
    for noise in ("Reporting training result", "RayTrainWorker", "pid=", " INFO ", "Downloading artifacts",
                  "Token authentication", "Created version", "Traceback"):
        assert noise not in drawn, (noise, drawn[-3000:])
    summary = "\n".join(lines[lines.index(next(ln for ln in lines if ln.startswith(f"run {name}: 8 steps"))):])
    run_id = re.search(r"MLflow run id : (\w+)", summary).group(1)
    assert re.search(r"registered    : models:/ganforge-dcgan/\d+", summary), summary
    s = SimpleNamespace(mlflow_run_id=run_id, tracking_uri=re.search(r"--backend-store-uri (\S+)", summary).group(1),
                        run_dir=str(tmp_path / name), run_name=name,
                        checkpoint=re.search(r"checkpoint    : (\S+)", summary).group(1),
                        last_grid=re.search(r"sample grid   : \S+/artifacts/(\S+)", summary).group(1), steps=8)
    client = MlflowClient(s.tracking_uri)
    run = client.get_run(s.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["loss.kind"] == "hinge" and run.data.params["model.name"] == "dcgan"
    assert [st for st, _ in _history(s, "loss_d")] == [2, 4, 6, 8]
    assert all(v > 0 for _, v in _history(s, "images_per_s"))
    assert _history(s, "skipped_samples")[-1][1] == 0
    grids = _artifacts(s, "samples")
    assert grids == ["samples/step_0000004.png", "samples/step_0000008.png"]
    assert s.last_grid == "samples/step_0000008.png"
    saved = yaml.safe_load((Path(s.run_dir) / "resolved_config.yaml").read_text())
    assert C.from_dict(saved).train.steps == 8
    assert "resolved_config.yaml" in _artifacts(s, None)
    assert {"checkpoint/state.pt", "checkpoint/meta.json"} <= set(_artifacts(s, "checkpoint"))
    state = checkpoint.load(s.checkpoint)
    assert state["step"] == 8 and len(state["data_positions"]) == 2

    # In-loop evaluation: curves under a key that names the extractor, and its protocol as tags.
    keys = set(run.data.metrics)
    fid_key = next(k for k in keys if k.endswith("/fid"))
    assert "ganforge-small-shapestack" in fid_key          # never mistaken for a standard FID
    assert [st for st, _ in _history(s, fid_key)] == [4, 8]
    assert [st for st, _ in _history(s, "eval/coverage_modes")] == [4, 8]
    assert any(k.endswith("/kid_mean") for k in keys)
    tags = run.data.tags
    assert tags["eval.extractor"] == "ganforge-small-shapestack" and tags["eval.standard"] == "false"
    assert tags["eval.n_fake"] == "64" and len(tags["eval.extractor_sha256"]) == 64
    assert tags["eval.ref_stats_sha256"] not in ("", "none")
    assert any(a.path.startswith("refstats/") for a in client.list_artifacts(s.mlflow_run_id, "refstats"))
    best = checkpoint.load(tmp_path / s.run_name / "best_checkpoint")
    assert best["step"] in (4, 8)


def test_worker_failure_restores_then_a_rerun_resumes(ray_session, smoke_shards, tmp_path):
    # Rank 1 raises at step 6; the group restarts from the step-4 checkpoint and finishes.
    cfg = _cfg(tmp_path, "train.inject_failure_at=6", "tracking.register=false")
    s = run_training(cfg)
    assert s.steps == 8
    assert (tmp_path / s.run_name / ".injected_failure_6").exists()
    assert checkpoint.load(s.checkpoint)["step"] == 8
    # Step 6 is reported only by the restarted group: the failure came before its report.
    assert [st for st, _ in _history(s, "loss_d")] == [2, 4, 6, 8]

    # Re-running the same run name with more steps continues the finished run, even when its
    # newest checkpoint (step 8) was corrupted on disk meanwhile: the rerun warns and resumes from
    # the intact step-4 one instead of failing after its restarts.
    newest = Path(s.checkpoint) / checkpoint.STATE
    blob = bytearray(newest.read_bytes())
    blob[1000:1064] = bytes(b ^ 0xFF for b in blob[1000:1064])
    newest.write_bytes(bytes(blob))
    d = C.to_dict(cfg)
    more = C.from_dict({**d, "train": {**d["train"], "steps": 12, "inject_failure_at": None}})
    second = run_training(more)
    assert second.mlflow_run_id == s.mlflow_run_id       # same MLflow run, one curve
    assert second.steps == 12
    # Steps 6 and 8 come again: the rerun continued from step 4.
    assert [st for st, _ in _history(second, "loss_d")] == [2, 4, 6, 8, 6, 8, 10, 12]
    assert checkpoint.load(second.checkpoint)["step"] == 12
