"""One trial: a Ray Train run of the study's base config with the trial's values, its reports
handed to Tune together with their checkpoints (so PBT can exploit and a restore can continue).
With `--in-process` a single-worker trial runs the engine in the trial's own process instead."""
from __future__ import annotations

import asyncio
import math
import os
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ray.train import UserCallback

from jobs.tune import runs
from jobs.tune.study import PROXY, SCHED_TIME, TRIAL_CPU, Study
from pipeline.tuning import search_space as S


class Mailbox:
    """One report at a time from the Train controller to the trial function, and back an ack
    once Tune has taken it (one small async actor: each actor is a process to start).
    Once closed, deliveries return at once: a Train run being aborted must not wait on a trial
    that stopped listening."""

    def __init__(self):
        self.reports, self.acks, self.closed = asyncio.Queue(1), asyncio.Queue(1), False

    async def deliver(self, item) -> None:
        if self.closed:
            return
        await self.reports.put(item)
        if item is not None:
            await self.acks.get()

    async def take(self):
        return await self.reports.get()

    async def ack(self) -> None:
        await self.acks.put(True)

    async def close(self) -> None:
        self.closed = True
        if self.acks.empty():
            self.acks.put_nowait(True)             # releases a delivery waiting for its ack


class ForwardToTrial(UserCallback):
    """Ray Train callback (runs in the Train controller): hand each report - rank 0's metrics
    (the loop already averages them over ranks) and the persisted checkpoint's path - to the
    trial function, and wait until Tune has taken it. The wait keeps Tune's copy of a
    checkpoint ahead of Train's `keep_checkpoints` deletions. The first report also carries the
    controller's handle, so that a trial Tune stops can abort its Train run cleanly."""

    def __init__(self, mailbox):
        self.mailbox, self.sent_handle = mailbox, False

    def after_report(self, run_context, metrics, checkpoint):
        import ray

        item = {"metrics": dict(metrics[0]), "checkpoint": checkpoint.path if checkpoint else None}
        if not self.sent_handle:
            item["controller"], self.sent_handle = ray.get_runtime_context().current_actor, True
        ray.get(self.mailbox.deliver.remote(item))


class Objective:
    """Puts the objective in every report. An evaluation score (eval.every > 0) comes only every
    eval.every steps and under its full key (eval/<extractor>/fid): a short name (fid) finds it,
    and reports in between carry the latest score (NaN before the first), as Tune wants the
    metric in every result."""

    def __init__(self, key: str):
        self.key, self.last = key, math.nan

    def fill(self, metrics: dict) -> dict:
        if self.key in metrics:
            return {}
        hit = next((k for k in metrics if k.startswith("eval/") and k.split("/")[-1] == self.key), None)
        if hit is not None:
            self.last = metrics[hit]
        return {self.key: self.last}


def trial_dirname(trial) -> str:
    return trial.trial_id


def trial_name(trial) -> str:
    return trial.trial_id


def _train_run_name(train_root: Path, trial_id: str, from_checkpoint: bool) -> str:
    """`<trial_id>` for a fresh start; `<trial_id>-rN` for each start from a Tune checkpoint. A
    Train run name is never reused for a different starting point: Ray Train would silently
    restore that run's own latest checkpoint instead of the one PBT handed over."""
    if not from_checkpoint and not (train_root / trial_id).exists():
        return trial_id
    n = 1
    while (train_root / f"{trial_id}-r{n}").exists():
        n += 1
    return f"{trial_id}-r{n}"


def run_trial(config: dict, study: dict, verbose: bool = False) -> None:
    """One Tune trial: a Ray Train run of the base config with this trial's values (or, with
    --in-process, the engine in this process)."""
    import logging

    import ray
    import ray.tune

    if not verbose:       # "Checkpoint successfully created at: ..." at every report
        logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)

    from pipeline.tracking import runs as tracking

    # A reused trial actor waits this long for the previous trial's thread, which may be
    # aborting its Train run (below); Tune's default is 2 s.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    st = Study(**study)
    trial_id = ray.tune.get_context().get_trial_id()
    values = {k: config[k] for k in sorted(config)}
    ckpt = ray.tune.get_checkpoint()
    # Tune checkpoints live in <study>/tune/<trial_id>/checkpoint_*: the folder names the trial
    # whose weights this start continues (another trial's after a PBT exploit).
    origin = Path(ckpt.path).parent.name if ckpt else ""
    train_root = st.path / "train"
    run_name = _train_run_name(train_root, trial_id, ckpt is not None)
    cfg = S.apply(st.config, {**values, "train.run_name": run_name, "train.storage_path": str(train_root)})
    run_id = runs.child_run(st, cfg, trial_id, run_name)
    objective = Objective(st.objective)
    logger = tracking.RankZeroLogger(st.tracking_uri, run_id)
    if ckpt:
        logger.client.set_tag(run_id, "ganforge.resumed_from", f"{origin}:{ckpt.path}")

    numeric = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def to_tune(m: dict, checkpoint_path: str | None) -> None:
        """One report to Tune: the loop's metrics, the proxy, the objective, the searched values."""
        # translators without a single D report no d_real/d_fake; they rank by their own stats
        extra = {**({PROXY: m["d_real"] - m["d_fake"]} if "d_real" in m and "d_fake" in m else {}), **numeric}
        extra.update(objective.fill({**m, **extra}))
        clock = {SCHED_TIME: m["step"]} if m["step"] < cfg.train.steps else {}
        logger.metrics(extra, int(m["step"]))       # beside rank 0's loss curves, same steps
        tune_ckpt = ray.tune.Checkpoint.from_directory(checkpoint_path) if checkpoint_path else None
        ray.tune.report({**m, **extra, **clock, **{k: v for k, v in values.items() if k not in numeric},
                         "origin_trial": origin, "train_run": run_name,
                         "checkpoint_path": checkpoint_path or ""}, checkpoint=tune_ckpt)

    try:
        if st.in_process:
            _fit_in_process(cfg, st, train_root / run_name, ckpt.path if ckpt else None, logger, to_tune)
        else:
            _fit_train_run(cfg, st, trial_id, run_name, train_root, run_id, ckpt, to_tune, verbose)
    except Exception:
        tracking.end_run(st.tracking_uri, run_id, ok=False)
        raise
    # (A trial Tune stops or pauses leaves by SystemExit: the driver ends its run as KILLED.)
    tracking.end_run(st.tracking_uri, run_id, ok=True)


def _fit_in_process(cfg, st: Study, run_dir: Path, resume_from: str | None, logger, to_tune) -> None:
    """`--in-process`: the engine runs in this Tune process through the local context, with
    rank 0's MLflow logger; each checkpoint is kept in run_dir (as `ganforge train --local`
    keeps them) and handed to Tune. No Train controller or worker processes to start: on 2 cores
    that is ~15 s of imports per trial start."""
    import torch

    from pipeline.data import shard_counts
    from pipeline.engine import loop
    from pipeline.engine.context import LocalContext

    class TrialContext(LocalContext):
        def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
            to_tune(dict(metrics), super().report(metrics, checkpoint_dir))   # Tune takes the kept copy

    device = "cuda" if cfg.scaling.use_gpu and torch.cuda.is_available() else "cpu"
    ctx = TrialContext(cfg, run_dir, device, resume_from, quiet=True)
    ctx.tracker = logger
    prepared = None
    if cfg.eval.every:
        from pipeline.evaluation import in_loop as evaluation
        prepared = evaluation.prepare(cfg, st.shard_urls, st.manifest, st.data_spec)
    loop.run(cfg, ctx, {"urls": st.shard_urls, "counts": shard_counts(st.manifest)}, prepared)


def _fit_train_run(cfg, st: Study, trial_id: str, run_name: str, train_root: Path, run_id: str,
                   ckpt, to_tune, verbose: bool) -> None:
    """A Ray Train run of the trial's config, each of its reports handed to `to_tune`."""
    import ray

    from jobs.train import build_trainer

    mailbox = ray.remote(num_cpus=0)(Mailbox).remote()
    trainer = build_trainer(cfg, urls=st.shard_urls, manifest=st.manifest, run_name=run_name,
                            storage=train_root, tracking_uri=st.tracking_uri, mlflow_run_id=run_id,
                            resume_from=ckpt.path if ckpt else None, spec=st.data_spec,
                            callbacks=[ForwardToTrial(mailbox)], verbose=verbose)
    outcome: dict[str, Any] = {}

    def fit():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:            # handed to the trial thread, raised there
            outcome["error"] = e
        finally:
            mailbox.deliver.remote(None)

    fitting = threading.Thread(target=fit, name=f"fit-{trial_id}", daemon=True)
    fitting.start()
    controller = None
    try:
        while (item := ray.get(mailbox.take.remote())) is not None:
            controller = item.get("controller", controller)
            to_tune(item["metrics"], item["checkpoint"])
            mailbox.ack.remote()
    except BaseException:
        # Tune stops (ASHA) or pauses (PBT) a trial by raising SystemExit in report. Abort the
        # Train run the way Ctrl-C does - workers stopped, their CPUs released - rather than
        # leaving it to die with this process: the actor may be reused for the next trial.
        mailbox.close.remote()                      # frees the controller's callback
        if controller is not None:
            controller.abort.remote()
        fitting.join(timeout=60)
        raise
    finally:
        ray.kill(mailbox)
    if "error" in outcome:
        raise outcome["error"]


def trainable(study: Study, verbose: bool = False):
    from ray import tune

    sc = study.config["scaling"]
    # A Train run's trial only waits on its workers (TRIAL_CPU); an in-process one is the worker.
    res = ({"CPU": sc["cpus_per_worker"], **({"GPU": 1} if sc["use_gpu"] else {})} if study.in_process
           else {"CPU": TRIAL_CPU})
    return tune.with_resources(tune.with_parameters(run_trial, study=asdict(study), verbose=verbose), res)
