"""MLflow for a study: one parent run (space, scheduler, objective, later the best config and
the results) and one child run per trial, found again by tag when the trial restarts."""
from __future__ import annotations

from jobs.tune.study import Study
from pipeline import config as C


def child_run(study: Study, cfg: C.Config, trial_id: str, run_name: str) -> str:
    """The trial's MLflow run under the study's parent: found by tag when the trial restarts
    (PBT, pause, --resume), so one trial keeps one metric history."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import runs as tracking

    client = MlflowClient(study.tracking_uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    if exp is not None:
        found = client.search_runs([exp.experiment_id], max_results=1, filter_string=(
            f"tags.`ganforge.trial_id` = '{trial_id}' and tags.`mlflow.parentRunId` = '{study.parent_run_id}'"))
        if found:
            return found[0].info.run_id
    from pipeline.tracking.registry import git_commit

    return tracking.start_run(cfg, f"{study.name}/{trial_id}", study.tracking_uri, tags={
        "mlflow.parentRunId": study.parent_run_id, "ganforge.study": study.name,
        "ganforge.git_commit": git_commit(),
        "ganforge.trial_id": trial_id, "ganforge.run_dir": str(study.path / "train" / run_name),
        "ganforge.data": study.data_spec,
        **({"ganforge.data_sha256": study.manifest.get("sha256", "")} if study.manifest else {})})


def start_parent(study: Study) -> str:
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    from jobs.tune import schedulers
    from pipeline.tracking import runs as tracking
    from pipeline.tracking.registry import git_commit

    cfg = C.from_dict(study.config)
    client = MlflowClient(study.tracking_uri)
    exp_id = tracking._experiment_id(client, cfg.tracking.experiment, study.tracking_uri)
    sp = study.space()
    run = client.create_run(exp_id, run_name=study.name, tags={
        "ganforge.study": study.name, "ganforge.study_dir": study.dir, "ganforge.kind": "tune-study",
        "ganforge.model": study.config["model"]["name"],
        "ganforge.config_hash": C.config_hash(cfg), "ganforge.data": study.data_spec,
        "ganforge.git_commit": git_commit()})
    params = {"space": study.space_name, "scheduler": study.scheduler, "objective": study.objective,
              "mode": study.mode, "trials": study.trials, "seeds": study.seeds,
              "max_concurrent": study.max_concurrent or "auto", "config": study.config["preset"],
              "overrides": " ".join(study.overrides) or "-",
              **{f"space.{k}": p.spec for k, p in sp.params.items()},
              **{f"scheduler.{k}": v for k, v in schedulers.settings(study, sp).items()}}
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    for f in ("space.yaml", "base_config.yaml"):
        client.log_artifact(run.info.run_id, str(study.path / f))
    return run.info.run_id


def find_child(study: Study, client, trial_id: str) -> str | None:
    exp = client.get_run(study.parent_run_id).info.experiment_id
    found = client.search_runs([exp], max_results=1, filter_string=(
        f"tags.`ganforge.trial_id` = '{trial_id}' and tags.`mlflow.parentRunId` = '{study.parent_run_id}'"))
    return found[0].info.run_id if found else None
