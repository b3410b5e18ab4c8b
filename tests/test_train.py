"""A real Ray Train run on 2 CPU workers: failure recovery, then a rerun that resumes past a corrupt checkpoint.

The terminal, tracking and in-loop evaluation of `ganforge train` are checked in
test_registry_server.py, where the same fit also feeds the registry flow on a real server."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest
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
