"""MLflow tracking. The driver opens and closes the run; rank 0 logs metrics and sample grids
into it by run id. No other rank talks to MLflow.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from pipeline import config as C

# mlflow is imported inside the functions: only the driver and rank 0 talk to MLflow, and the
# import costs every other Ray Train worker process about a CPU-second at start-up.

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def tracking_uri(cfg: C.Config | None = None) -> str:
    """Config first, then $MLFLOW_TRACKING_URI, then a sqlite file under $GANFORGE_HOME."""
    if cfg is not None and cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    home = C.ganforge_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def _experiment_id(client, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    # With a sqlite store MLflow would put artifacts in ./mlruns of whatever cwd; pin them
    # beside the database instead.
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def start_run(cfg: C.Config, run_name: str, uri: str, tags: dict | None = None) -> str:
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp_id = _experiment_id(client, cfg.tracking.experiment, uri)
    run = client.create_run(exp_id, run_name=run_name, tags={"ganforge.model": C.to_dict(cfg)["model"]["name"],
                                                            "ganforge.config_hash": C.config_hash(cfg),
                                                            **(tags or {})})
    params = [Param(k, str(v)[:6000]) for k, v in C.flatten(C.to_dict(cfg)).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i:i + 100])
    with tempfile.TemporaryDirectory() as td:
        p = Path(td) / "resolved_config.yaml"
        p.write_text(C.dump_yaml(cfg))
        client.log_artifact(run.info.run_id, str(p))
    return run.info.run_id


def end_run(uri: str, run_id: str, ok: bool) -> None:
    from mlflow.entities import RunStatus
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED))


class RankZeroLogger:
    """Metrics and sample grids into an existing run (used on rank 0 inside the worker)."""

    def __init__(self, uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client, self.run_id = MlflowClient(uri), run_id

    def metrics(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric
        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in values.items()])

    def grid(self, images: torch.Tensor, step: int, nrow: int | None = None) -> str:
        """images: float [-1, 1] NCHW. Logged as samples/step_XXXXXXX.png; returns the artifact path."""
        import torchvision.utils as vutils
        with tempfile.TemporaryDirectory() as td:
            p = Path(td) / f"step_{step:07d}.png"
            nrow = nrow or max(1, int(len(images) ** 0.5))
            vutils.save_image(images.float().clamp(-1, 1) * 0.5 + 0.5, p, nrow=nrow, padding=1)
            self.client.log_artifact(self.run_id, str(p), artifact_path="samples")
        return f"samples/{p.name}"

    def scores(self, results: dict, protocol, *, step: int, ref_path=None) -> dict[str, float]:
        """In-loop evaluation results as eval/* metrics with their protocol tags."""
        from pipeline.evaluation.metrics.protocol import log_scores
        return log_scores(self.client, self.run_id, results, protocol, step=step, ref_path=ref_path)

    def artifacts(self, local_dir: str, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, local_dir, artifact_path=artifact_path)
