"""The study driver: start the parent run, start or join Ray, fit the Tuner (or restore it
with --resume), then hand the results to results.finish."""
from __future__ import annotations

import os
import time

from jobs.tune import results, runs, schedulers, trial
from jobs.tune.study import Study, StudyResult


def init_ray(address: str | None, verbose: bool = False) -> None:
    """jobs.train's Ray: local (with the state-API address set for Ray Train's placement-group
    cleaner, which Tune's stopped trials need) or the cluster at `address`."""
    from jobs import train

    train._init_ray(address, verbose)


def run_study(study: Study, *, resume: bool = False, verbose: bool = False) -> StudyResult:
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from jobs.train import quiet_driver
    from jobs.tune.progress import StudyTable

    t0 = time.time()
    quiet_driver(verbose)
    if not verbose:
        # Tune's newer output engine prints its configuration box and TensorBoard hint at any
        # verbosity; the older one at verbose=0 prints nothing. Our StudyTable replaces both.
        # Its snapshot warning fires whenever checkpoints come faster than every 5 s (smoke runs).
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    sp = study.space()
    if not study.parent_run_id:
        study.parent_run_id = runs.start_parent(study)
        study.save()
    init_ray(study.config["scaling"]["address"], verbose)
    # Our table of the study, or (--verbose) Tune's own boxes and status tables.
    table = [] if verbose else [StudyTable(study.name, study.objective, study.mode, list(sp.searched),
                                           study.config["train"]["steps"])]
    exp_dir = study.path / "tune"
    print(f"[ganforge] study {study.name}: {study.dir}\n[ganforge]   resume with: "
          f"ganforge tune --resume {study.name}", flush=True)
    if resume and tune.Tuner.can_restore(str(exp_dir)):
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trial.trainable(study, verbose),
                                   resume_unfinished=True, resume_errored=True)
    else:
        pbt = study.scheduler == "pbt"
        tuner = tune.Tuner(
            trial.trainable(study, verbose),
            param_space=schedulers.param_space(study, sp),
            tune_config=tune.TuneConfig(
                metric=study.objective, mode=study.mode, num_samples=study.trials,
                scheduler=schedulers.make(study, sp),
                # The next trial starts in the finished one's process: no new Python, no imports.
                reuse_actors=True,
                # Seeds are a grid: keep each sampled configuration constant across its seeds.
                # (Tune ignores max_concurrent_trials when given a search generator.)
                search_alg=BasicVariantGenerator(constant_grid_search=True,
                                                 max_concurrent=schedulers.max_concurrent(study)),
                trial_name_creator=trial.trial_name, trial_dirname_creator=trial.trial_dirname),
            run_config=tune.RunConfig(
                name="tune", storage_path=study.dir, verbose=1 if verbose else 0, callbacks=table,
                # PBT may hand any trial's checkpoint to another trial later: keep them all.
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=None if pbt else study.config["train"]["keep_checkpoints"]),
                failure_config=tune.FailureConfig(max_failures=0)))
    grid = tuner.fit()
    return results.finish(study, grid, t0)
