"""A study: what was asked (config, space, scheduler, objective), validated before anything
starts, and saved as study.json so that a fresh driver can resume it."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline import config as C
from pipeline.tuning import search_space as S

SCHEDULERS = ("asha", "pbt", "none")
# What a trial reports to Tune: the loop's metrics (pipeline/train_loop.py), the proxy, the
# searched values. gp and r1 only when their weight is > 0.
LOOP_METRICS = ("loss_d", "loss_g", "d_real", "d_fake", "gp", "r1", "images_per_s", "step",
                "skipped_samples", "converted_samples", "skipped_shards", "shard_retries")
PROXY = "d_gap"
# The schedulers' clock, in G steps. A trial's final report leaves it out, so neither ASHA (which
# stops a trial at max_t) nor PBT (which pauses one at each interval) acts on a trial that is
# about to finish on its own: its Train run ends normally instead of being killed at the end,
# and PBT does not restart a finished trial from its own last checkpoint.
SCHED_TIME = "sched_step"
SEED_KEY = "train.seed"
# CPU held by each trial function, which only waits on its Train run. Ray refuses 0; a sliver
# means a started trial never holds what its own workers need (PLATFORM_NOTES: the default
# 1 CPU deadlocks two trials on 2 cores) while Tune still places trials by resources.
TRIAL_CPU = 0.01


@dataclass
class Study:
    """Everything a trial and a resumed driver need; saved as study.json."""
    name: str
    dir: str
    config: dict                      # resolved base Config, to_dict() form
    overrides: list[str]
    space_name: str                   # the preset or file it came from
    space_file: str                   # its copy inside the study folder
    scheduler: str
    trials: int                       # Tune num_samples (a grid runs whole each sample)
    seeds: int
    max_concurrent: int | None
    objective: str
    mode: str
    tracking_uri: str
    shard_urls: list[str]
    manifest: dict | None
    data_spec: str
    in_process: bool = False          # train in the trial's process, no Ray Train run (1 worker)
    parent_run_id: str = ""
    created: float = field(default_factory=time.time)

    @property
    def path(self) -> Path:
        return Path(self.dir)

    def space(self) -> S.Space:
        return S.load(self.space_file)       # its own copy: editing a preset never changes a study

    def save(self) -> None:
        (self.path / "study.json").write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, name_or_dir: str) -> "Study":
        p = Path(name_or_dir)
        if not (p / "study.json").is_file():
            p = studies_root() / name_or_dir
        if not (p / "study.json").is_file():
            have = ", ".join(sorted(q.name for q in studies_root().glob("*/study.json"))) or "none"
            raise C.ConfigError(f"--resume {name_or_dir}: no study there (studies under "
                                f"{studies_root()}: {have})")
        return cls(**json.loads((p / "study.json").read_text()))


@dataclass
class StudyResult:
    study: Study
    rows: list[dict]                  # one per trial
    summary: list[dict]               # one per configuration (mean/std over seeds), best first
    best: dict | None                 # the summary row of the best configuration
    best_trial: dict | None           # the trial registered
    registered: str | None            # "name/version"
    csv: Path
    summary_csv: Path
    plot: Path | None
    seconds: float


def studies_root() -> Path:
    return C.ganforge_home() / "tune"


# ---------------------------------------------------------------- setup

def new_study(config: str, overrides: list[str], *, space: str, scheduler: str = "asha",
              trials: int | None = None, seeds: int = 1, max_concurrent: int | None = None,
              objective: str | None = None, mode: str | None = None, name: str | None = None,
              in_process: bool = False, dry_run: bool = False) -> Study:
    """Validate everything (config, space keys, objective, scheduler settings) and write the
    study folder. Starts nothing: the first error names the key. `dry_run` writes nothing."""
    from jobs.tune import schedulers
    from pipeline.tracking import runs as tracking

    cfg = C.load(config, overrides)
    sp = S.load(space)
    base = C.to_dict(cfg)
    S.validate(sp, base, overrides)
    if scheduler not in SCHEDULERS:
        raise C.ConfigError(f"--scheduler: {scheduler!r} not one of {', '.join(SCHEDULERS)}")
    if seeds < 1:
        raise C.ConfigError(f"--seeds: must be >= 1, got {seeds}")
    if seeds > 1 and SEED_KEY in sp.params:
        raise C.ConfigError(f"{SEED_KEY}: searched by the space and set by --seeds; drop one")
    if seeds > 1 and scheduler == "pbt":
        raise C.ConfigError("--seeds: PBT perturbs configurations as they run, so there is no "
                            "fixed configuration to repeat; use --seeds with asha or none")
    if scheduler == "pbt":
        sp.mutations()                              # grid() is refused here, by key
    if in_process and (cfg.scaling.num_workers != 1 or cfg.scaling.min_workers is not None):
        raise C.ConfigError(f"scaling.num_workers: --in-process trials train in one process; got "
                            f"{cfg.scaling.num_workers} workers (set scaling.num_workers=1, or drop "
                            f"--in-process to run each trial as a Ray Train run)")
    if in_process and "scaling.num_workers" in sp.params:
        raise C.ConfigError("scaling.num_workers: searched by the space, but --in-process trials "
                            "have one worker")
    from pipeline import families

    fam = families.of(cfg)
    objective = objective or sp.objective or (cfg.eval.best_metric if cfg.eval.every else fam.proxy)
    known = set(LOOP_METRICS) | {fam.proxy} | set(fam.objectives) | set(sp.searched)
    evaluated = cfg.eval.every and (objective.startswith("eval/") or objective in cfg.eval.metrics)
    if objective not in known and not evaluated:
        raise C.ConfigError(f"--objective: {objective!r} is not reported by trials (reported: "
                            f"{', '.join(sorted(known))}; with eval.every > 0 also eval/... scores "
                            f"such as {', '.join(cfg.eval.metrics)})")
    mode = mode or sp.mode or fam.objectives.get(objective, "min")
    if mode not in ("min", "max"):
        raise C.ConfigError(f"--mode: must be min or max, got {mode!r}")
    if trials is not None and trials < 1:
        raise C.ConfigError(f"--trials: must be >= 1, got {trials}")
    has_grid = any(p.kind == "grid" for p in sp.params.values())
    trials = trials or (1 if has_grid else 8)

    name = name or f"{sp.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    root = studies_root() / name
    if (root / "study.json").exists():
        raise C.ConfigError(f"--name: study {name!r} exists at {root}; resume it with --resume {name}")
    if scheduler == "pbt":
        schedulers.pbt_interval(base, sp)
    if dry_run:
        return Study(name=name, dir=str(root), config=base, overrides=list(overrides),
                     space_name=sp.name, space_file=sp.path,
                     scheduler=scheduler, trials=trials, seeds=seeds, max_concurrent=max_concurrent,
                     objective=objective, mode=mode, tracking_uri="(not started)", shard_urls=[],
                     manifest=None, data_spec=cfg.data.shards or f"built-in {cfg.data.builtin}",
                     in_process=in_process)
    from jobs.train import _shards

    urls, manifest, spec = _shards(cfg)            # builds built-in shards once, before Ray
    if cfg.eval.every:                             # fit the extractor / cache the reference once,
        from pipeline.evaluation import in_loop as evaluation            # not in every trial at the same time
        evaluation.prepare(cfg, urls, manifest, spec)
    root.mkdir(parents=True, exist_ok=True)
    space_copy = root / "space.yaml"
    space_copy.write_text(Path(sp.path).read_text())
    (root / "base_config.yaml").write_text(C.dump_yaml(cfg))
    study = Study(name=name, dir=str(root.resolve()), config=base, overrides=list(overrides),
                  space_name=sp.name, space_file=str(space_copy.resolve()), scheduler=scheduler, trials=trials,
                  seeds=seeds, max_concurrent=max_concurrent, objective=objective, mode=mode,
                  tracking_uri=tracking.tracking_uri(cfg), shard_urls=urls, manifest=manifest,
                  data_spec=spec, in_process=in_process)
    study.save()
    return study


def describe(study: Study) -> str:
    """What --dry-run prints: the search, the scheduler and the per-trial resources."""
    from jobs.tune import schedulers

    sp, cfg = study.space(), study.config
    lines = [f"study {study.name} ({study.dir})",
             f"  config     : {cfg['preset']} ({cfg['model']['name']}, {cfg['train']['steps']} steps)",
             f"  space      : {study.space_name}"]
    lines += [f"    {k}: {p.spec}" for k, p in sp.params.items()]
    lines += [f"  scheduler  : {study.scheduler} {schedulers.settings(study, sp)}",
              f"  objective  : {study.objective} ({study.mode})",
              f"  trials     : {study.trials} sample(s) x {study.seeds} seed(s)",
              "  per trial  : " + ("in its own process (no Ray Train run), " if study.in_process else
                                   f"{cfg['scaling']['num_workers']} workers x ")
              + f"{cfg['scaling']['cpus_per_worker']} CPU"
              + (" + 1 GPU each" if cfg['scaling']['use_gpu'] else "")
              + f"; max concurrent {study.max_concurrent or 'auto (cluster CPUs / trial CPUs)'}"]
    return "\n".join(lines)
