"""Schedulers (ASHA, PBT, FIFO) and the Tune search settings of a study."""
from __future__ import annotations

from jobs.tune.study import SCHED_TIME, SEED_KEY, TRIAL_CPU, Study
from pipeline import config as C
from pipeline.tuning import search_space as S


def pbt_interval(config: dict, sp: S.Space) -> int:
    """PBT copies a trial's latest Tune checkpoint: perturb only at steps that write one."""
    ckpt_every = config["train"]["checkpoint_every"]
    every = sp.pbt.get("perturbation_interval", ckpt_every)
    if every % ckpt_every:
        raise C.ConfigError(f"pbt.perturbation_interval: {every} steps is not a multiple of "
                            f"train.checkpoint_every ({ckpt_every}); PBT can only copy a checkpoint")
    return every


def settings(study: Study, sp: S.Space) -> dict:
    t = study.config["train"]
    if study.scheduler == "asha":
        return {"time_attr": SCHED_TIME, "max_t": t["steps"],
                "grace_period": sp.asha.get("grace_period", t["log_every"]),
                "reduction_factor": sp.asha.get("reduction_factor", 2)}
    if study.scheduler == "pbt":
        return {"time_attr": SCHED_TIME, "perturbation_interval": pbt_interval(study.config, sp),
                "quantile_fraction": sp.pbt.get("quantile_fraction", 0.25),
                "resample_probability": sp.pbt.get("resample_probability", 0.25),
                "synch": sp.pbt.get("synch", False)}
    return {}


def make(study: Study, sp: S.Space):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    kw = settings(study, sp)
    if study.scheduler == "asha":
        return ASHAScheduler(**kw)
    if study.scheduler == "pbt":
        # require_attrs=False: the final report has no SCHED_TIME on purpose (see above).
        return PopulationBasedTraining(hyperparam_mutations=sp.mutations(), custom_explore_fn=sp.clamp,
                                       require_attrs=False, **kw)
    return FIFOScheduler()


def param_space(study: Study, sp: S.Space) -> dict:
    from ray import tune

    ps = sp.param_space()
    if study.seeds > 1:
        base = study.config["train"]["seed"]
        ps[SEED_KEY] = tune.grid_search([base + i for i in range(study.seeds)])
    return ps


def max_concurrent(study: Study) -> int:
    """Trials whose Train workers fit in the cluster at once."""
    import ray

    if study.max_concurrent:
        return study.max_concurrent
    s, res = study.config["scaling"], ray.cluster_resources()
    n = int(res.get("CPU", 1) // (s["cpus_per_worker"] if study.in_process else
                                  s["num_workers"] * s["cpus_per_worker"] + TRIAL_CPU))
    if s["use_gpu"]:
        n = min(n, int(res.get("GPU", 0) // s["num_workers"]))
    return max(1, n)
