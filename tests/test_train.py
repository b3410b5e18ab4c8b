"""Real Ray Train runs on 2 CPU workers: tracking, failure recovery, resume."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from jobs.train import run_training
from pipeline import checkpoint
from pipeline import config as C

pytestmark = pytest.mark.slow


def _cfg(tmp_path, *over):
    name = f"t-{uuid.uuid4().hex[:8]}"        # a reused name would silently resume
    return C.load("smoke", [f"train.run_name={name}", f"train.storage_path={tmp_path}", *over])


def _history(s, key):
    return [(m.step, m.value) for m in MlflowClient(s.tracking_uri).get_metric_history(s.mlflow_run_id, key)]


def _artifacts(s, path):
    return [a.path for a in MlflowClient(s.tracking_uri).list_artifacts(s.mlflow_run_id, path)]


def test_train_tracks_everything(ray_session, smoke_shards, tmp_path):
    s = run_training(_cfg(tmp_path))
    assert s.steps == 8
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


def test_worker_failure_restores_then_a_rerun_resumes(ray_session, smoke_shards, tmp_path):
    # Rank 1 raises at step 6; the group restarts from the step-4 checkpoint and finishes.
    cfg = _cfg(tmp_path, "train.inject_failure_at=6", "tracking.register=false")
    s = run_training(cfg)
    assert s.steps == 8
    assert (tmp_path / s.run_name / ".injected_failure_6").exists()
    assert checkpoint.load(s.checkpoint)["step"] == 8
    # Step 6 is reported only by the restarted group: the failure came before its report.
    assert [st for st, _ in _history(s, "loss_d")] == [2, 4, 6, 8]

    # Re-running the same run name with more steps continues the finished run.
    d = C.to_dict(cfg)
    more = C.from_dict({**d, "train": {**d["train"], "steps": 12, "inject_failure_at": None}})
    second = run_training(more)
    assert second.mlflow_run_id == s.mlflow_run_id       # same MLflow run, one curve
    assert second.steps == 12
    assert [st for st, _ in _history(second, "loss_d")] == [2, 4, 6, 8, 10, 12]
    assert checkpoint.load(second.checkpoint)["step"] == 12
