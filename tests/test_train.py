"""Real Ray Train runs on 2 CPU workers: tracking, in-loop evaluation, failure recovery, resume."""
from __future__ import annotations

import uuid
from pathlib import Path

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


def test_train_tracks_everything(ray_session, smoke_shards, tmp_path, capfd):
    # One run checks tracking and the in-loop evaluation (every Ray fit costs ~20 s of start-up
    # on 2 cores): FID/KID/coverage on the EMA generator every 4 steps, best checkpoint kept.
    s = run_training(_cfg(tmp_path, "eval.every=4", "eval.metrics=[fid,kid,coverage]", "eval.n_fake=64",
                          "eval.n_real=128", "eval.kid_subsets=4", "eval.kid_subset_size=32",
                          "eval.batch_size=16"))
    assert s.steps == 8
    assert "Reporting training result" not in "".join(capfd.readouterr())   # Ray's per-report lines
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
