"""Driver for one training run: data ready -> MLflow run -> Ray Train fit -> final artifacts."""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline import config as C
from pipeline.evaluation import in_loop as evaluation
from pipeline.tracking import storage as S, runs as tracking

RUN_FILE = "ganforge_run.json"   # in the Ray Train run folder: links it to its MLflow run


class TrainingError(RuntimeError):
    """Training failed after Ray Train used up scaling.max_failures restarts."""


@dataclass
class TrainSummary:
    run_name: str
    run_dir: str
    mlflow_run_id: str
    tracking_uri: str
    steps: int
    checkpoint: str | None
    last_grid: str | None          # artifact path inside the MLflow run
    model_uri: str | None          # registered generator version, when tracking.register
    seconds: float
    translates: bool = False       # the family takes images (ganforge translate), not noise


def builtin_shards(cfg: C.Config) -> Path:
    """Build the configured built-in dataset under $GANFORGE_HOME/data once; reuse it after."""
    from pipeline.data.datasets import build_builtin

    d = cfg.data
    out = C.ganforge_home() / "data" / f"{d.builtin}-{d.resolution}px-{d.builtin_samples}"
    if (out / "manifest.json").is_file():
        return out
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"[ganforge] writing built-in {d.builtin} shards to {out}", flush=True)
    build_builtin(d.builtin, tmp, resolution=d.resolution, n=d.builtin_samples,
                  shard_size=d.builtin_shard_size, seed=0)
    # Rename makes the folder appear whole or not at all: a crash never leaves half a dataset.
    try:
        tmp.rename(out)
    except OSError:                      # another process won the race; use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _shards(cfg: C.Config) -> tuple[list[str], dict | None, str]:
    # Imported here: Tune's trial actors import this module for build_trainer only, and
    # pipeline.data pulls in torchvision (seconds per process on a small machine).
    from pipeline.data import resolve_shards

    spec = cfg.data.shards or str(builtin_shards(cfg))
    urls, manifest = resolve_shards(spec)
    n_cls = getattr(cfg.model, "num_classes", 0)
    if manifest and n_cls > manifest["num_classes"]:
        raise C.ConfigError(f"model.num_classes: {n_cls} but the shards at {spec} hold "
                            f"{manifest['num_classes']} classes")
    return urls, manifest, spec


def _init_ray(address: str | None, verbose: bool = False) -> None:
    import ray

    if ray.is_initialized():
        return
    kw = {}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # Local Ray: poll workers faster than the 2 s default; small runs finish ~2x sooner.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        quiet_ray_start(verbose)
        # Ray Train's placement-group cleaner finds its cluster with the state API, which looks
        # for "the" local Ray by scanning processes and fails (a traceback on the terminal; a
        # stopped Tune trial's CPUs stay reserved) when the host runs several: two users' runs,
        # a run beside a test session. Every process of this cluster inherits the driver's
        # environment, so name our dashboard there (replacing an inherited one: it would point
        # at another cluster).
        import socket
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        kw = {"include_dashboard": True, "dashboard_port": port}
    ray.init(address=address, logging_level="INFO" if verbose else "WARNING", configure_logging=True, **kw)


def quiet_ray_start(verbose: bool) -> None:
    """Ray warns at every local start that token auth (its default) is on. Setting
    RAY_AUTH_MODE=token instead fails in 2.60 (the GCS rejects its own driver)."""
    import logging

    if not verbose:
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


def quiet_driver(verbose: bool) -> None:
    """MLflow logs its database setup and model validation at INFO and draws a bar per artifact
    download; the run's summary says what matters. --verbose keeps them."""
    if verbose:
        return
    import importlib
    import logging

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")   # read when mlflow is first imported
    importlib.import_module("mlflow")   # configures its loggers: the level set below then sticks
    logging.getLogger("mlflow").setLevel(logging.WARNING)


class DriverProgress:
    """The driver's progress line for a Ray Train run: polls the progress file rank 0 rewrites
    at every report (pipeline/engine/ray_context.py) and draws it with ProgressLine. A thread,
    so `trainer.fit()` keeps the main thread; a file, so no extra Ray actor (a process) is needed
    and it works wherever the run folder is (local, NFS, s3://)."""

    def __init__(self, run_dir: str, total: int):
        import threading

        from pipeline.engine.progress import PROGRESS_FILE, ProgressLine

        self.path = S.join(run_dir, PROGRESS_FILE)
        self.line, self.total = ProgressLine(total), total
        self.stale = S.read_text(self.path)     # a resumed run's last report is not news
        self.interval = 2.0 if S.is_uri(run_dir) else 0.5
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll_until_done, daemon=True, name="ganforge-progress")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join(timeout=5)
        if exc[0] is None:
            self.poll()                          # the last report, even if it came in the last interval
        self.line.close()

    def _poll_until_done(self) -> None:
        while not self.done.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        try:
            text = S.read_text(self.path)
        except OSError:
            return
        if text is None or text == self.stale:
            return
        self.stale = text
        try:
            d = json.loads(text)
        except ValueError:                       # caught mid-write; the next poll reads it whole
            self.stale = None
            return
        self.line.show(int(d["step"]), d.get("metrics", {}))


def run_training(cfg: C.Config, *, resume_from: str | None = None, verbose: bool = False) -> TrainSummary:
    """One Ray Train run, tracked in MLflow. The terminal shows one progress line, warnings and
    errors; `verbose` keeps Ray's and MLflow's own INFO lines as well."""
    import ray.train

    quiet_driver(verbose)

    t0 = time.time()
    urls, manifest, spec = _shards(cfg)
    run_name = cfg.train.run_name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    # A local path (made absolute) or an s3:// / gs:// URI that Ray Train writes to directly.
    storage = S.normalize(cfg.train.storage_path or C.ganforge_home() / "ray_results")
    run_dir = S.join(storage, run_name)
    S.makedirs(run_dir)
    uri = tracking.tracking_uri(cfg)

    link = S.join(run_dir, RUN_FILE)
    if (text := S.read_text(link)) is not None:
        # Same run name: Ray restores its latest checkpoint; keep the same MLflow run.
        run_id = json.loads(text)["mlflow_run_id"]
        print(f"[ganforge] continuing run {run_name} (MLflow run {run_id})", flush=True)
    else:
        from pipeline.tracking.registry import git_commit
        tags = {"ganforge.run_dir": run_dir, "ganforge.data": spec, "ganforge.git_commit": git_commit()}
        if manifest:
            tags["ganforge.data_sha256"] = manifest.get("sha256", "")
        run_id = tracking.start_run(cfg, run_name, uri, tags=tags)
        S.write_text(link, json.dumps({"mlflow_run_id": run_id, "tracking_uri": uri}))
    S.write_text(S.join(run_dir, "resolved_config.yaml"), C.dump_yaml(cfg))

    where = f"Ray at {cfg.scaling.address}" if cfg.scaling.address else "a local Ray"
    print(f"[ganforge] run {run_name}: {cfg.train.steps} steps on {cfg.scaling.num_workers} workers "
          f"({where}); MLflow run {run_id}", flush=True)
    _init_ray(cfg.scaling.address, verbose)
    trainer = build_trainer(cfg, urls=urls, manifest=manifest, run_name=run_name, storage=storage,
                            tracking_uri=uri, mlflow_run_id=run_id, resume_from=resume_from, spec=spec,
                            verbose=verbose)
    try:
        with DriverProgress(run_dir, cfg.train.steps):
            result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        tracking.end_run(uri, run_id, ok=False)
        # The worker's own exception (DataError, CheckpointError...) is the last line that says
        # anything; the rest is Ray's wrapping.
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise TrainingError(f"run {run_name} failed ({len(lines) and lines[-1]}); "
                            f"MLflow run {run_id}, Ray run folder {run_dir}") from None
    except BaseException:
        tracking.end_run(uri, run_id, ok=False)
        raise
    ckpt_path = model_uri = None
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            ckpt_path = result.checkpoint.path
            if cfg.tracking.log_checkpoint:
                tracking.RankZeroLogger(uri, run_id).artifacts(d, "checkpoint")
            if cfg.tracking.register:
                model_uri = _register(d, cfg, uri, run_id)
    tracking.end_run(uri, run_id, ok=True)
    ret = result.return_value or {}
    from pipeline import families
    return TrainSummary(run_name=run_name, run_dir=run_dir, mlflow_run_id=run_id,
                        tracking_uri=uri, steps=int((result.metrics or {}).get("step", ret.get("step", 0))),
                        checkpoint=ckpt_path, last_grid=ret.get("last_grid"),
                        model_uri=model_uri, seconds=time.time() - t0,
                        translates=families.of(cfg).translates)


def run_local(cfg: C.Config, out: str, device: str = "cpu", resume_from: str | None = None) -> dict:
    """The same engine in this process through the local context (torch alone): no Ray, no
    MLflow. Writes metrics.jsonl, samples/ and checkpoint_* under `out`; rerunning resumes."""
    from pipeline.data import shard_counts
    from pipeline.engine.context import checkpoints, train_local

    urls, manifest, spec = _shards(cfg)
    counts = shard_counts(manifest)
    prepared = evaluation.prepare(cfg, urls, manifest, spec) if cfg.eval.every else None
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "resolved_config.yaml").write_text(C.dump_yaml(cfg))
    t0 = time.time()
    result, ctx = train_local(cfg, {"urls": urls, "counts": counts}, out, device=device,
                              resume_from=resume_from, eval_prepared=prepared)
    have = checkpoints(Path(out))
    print(f"\nlocal run: {result['step']} steps in {time.time() - t0:.0f} s")
    print(f"  metrics     : {Path(out).resolve() / 'metrics.jsonl'}")
    print(f"  sample grid : {result['last_grid']}")
    print(f"  checkpoint  : {have[-1] if have else '(none)'}")
    return result


def _register(ckpt_dir: str, cfg: C.Config, uri: str, run_id: str) -> str | None:
    """Register the EMA generator; a registry hiccup must not fail a finished training."""
    from pipeline.tracking import registry

    try:
        mv = registry.register_checkpoint(ckpt_dir, tracking_uri=uri, run_id=run_id,
                                          name=cfg.tracking.model_name, alias=cfg.tracking.model_alias)
    except Exception as e:  # noqa: BLE001 - reported, and recoverable with `ganforge register`
        print(f"[ganforge] registration failed: {e}; retry with `ganforge register {run_id}`", flush=True)
        return None
    return f"models:/{mv.name}/{mv.version}"


def build_trainer(cfg: C.Config, *, urls: list[str], manifest: dict | None, run_name: str,
                  storage: str | Path, tracking_uri: str, mlflow_run_id: str,
                  resume_from: str | None = None, callbacks: list | None = None, spec: str = "",
                  verbose: bool = False):
    """The TorchTrainer for one run; shared by `run_training` and each Tune trial."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipeline.data import shard_counts
    from pipeline.engine.worker_entry import train_loop_per_worker

    s = cfg.scaling
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": C.to_dict(cfg), "shard_urls": urls,
            "shard_counts": shard_counts(manifest),
            "tracking_uri": tracking_uri, "mlflow_run_id": mlflow_run_id,
            "run_dir": S.join(str(storage), run_name), "resume_from": resume_from,
            "eval": evaluation.prepare(cfg, urls, manifest, spec) if cfg.eval.every else None,
            "verbose": verbose,
        },
        scaling_config=ray.train.ScalingConfig(
            # A (min, max) tuple is Ray Train's elastic mode: restart with fewer workers on node loss.
            num_workers=s.num_workers if s.min_workers is None else (s.min_workers, s.num_workers),
            use_gpu=s.use_gpu,
            resources_per_worker={"CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=str(storage), callbacks=callbacks,
            # Per-report INFO lines would bury the progress bar; Ray's log files keep them.
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
            failure_config=ray.train.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints)),
    )
