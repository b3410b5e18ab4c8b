"""`ganforge tune`: a Ray Tune study over a search space (jobs/tune/). Wired into jobs/cli.py by
add_commands(), which also handles its errors.

    ganforge tune CONFIG --space NAME [--trials N] [--scheduler asha|pbt|none] [--seeds K]
                  [--max-concurrent M] [--objective KEY --mode min|max] [--name STUDY] [k=v ...]
    ganforge tune --resume STUDY
"""
from __future__ import annotations

import argparse


def add_commands(sub) -> None:
    t = sub.add_parser("tune", help="search loss weights (or any config keys) with Ray Tune; "
                       "each trial is a Ray Train run, tracked in MLflow; the best generator is registered")
    t.add_argument("config", nargs="?", help="preset name (see jobs/configs) or path to a YAML file")
    t.add_argument("overrides", nargs="*", help="dotted overrides for every trial, e.g. train.steps=2000")
    t.add_argument("--space", help="search space: preset in jobs/configs/spaces (smoke_gp, dcgan_gp, "
                   "dcgan_lr) or a YAML file of `dotted.key: loguniform(a, b)|uniform|randint|choice|grid`")
    t.add_argument("--trials", type=int, help="configurations to sample (PBT: the population); a grid "
                   "space runs its whole grid per sample (default: 1 with a grid, else 8)")
    t.add_argument("--scheduler", choices=["asha", "pbt", "none"], default="asha")
    t.add_argument("--seeds", type=int, default=1, help="run each configuration K times (train.seed, "
                   "train.seed+1, ...) and rank by the mean (asha/none)")
    t.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as the "
                   "cluster's CPUs/GPUs hold Train workers for)")
    t.add_argument("--objective", help="reported metric to rank by (default: the space's; else "
                   "eval.best_metric when eval.every > 0; else the proxy d_gap)")
    t.add_argument("--mode", choices=["min", "max"], help="default: the space's, else min")
    t.add_argument("--name", help="study name (default: SPACE-TIME); its folder is $GANFORGE_HOME/tune/NAME")
    t.add_argument("--address", help="join this Ray cluster (the scaling.address override; with "
                   "--resume it replaces the study's own)")
    t.add_argument("--resume", metavar="STUDY", help="continue a study (name or folder) after its driver died")
    t.add_argument("--dry-run", action="store_true", help="validate, print the study and exit (writes nothing)")
    t.set_defaults(func=cmd_tune)
    _intermixed(t)


def _intermixed(parser: argparse.ArgumentParser) -> None:
    """Let `k=v` overrides follow the options (`tune smoke --space x train.steps=8`), as the
    usage line promises. Plain argparse stops filling positionals at the first option;
    parse_known_intermixed_args does not, but it cannot run on the top-level parser (it has
    subparsers), so this subparser uses it for its own arguments."""
    plain = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        parser.parse_known_args = plain          # the intermixed parse calls it itself
        try:
            return parser.parse_known_intermixed_args(args, namespace)
        finally:
            parser.parse_known_args = parse_known_args

    parser.parse_known_args = parse_known_args


def cmd_tune(args) -> int:
    from pipeline.config import ConfigError

    from jobs import tune

    if args.resume:
        if args.config or args.overrides or args.space:
            raise ConfigError("--resume: give only the study; its config and space are in its study.json")
        study = tune.Study.load(args.resume)
        if args.address:
            study.config["scaling"]["address"] = args.address
        res = tune.run_study(study, resume=True)
    else:
        if not args.config or not args.space:
            raise ConfigError("tune: needs CONFIG and --space NAME (or --resume STUDY)")
        if args.address:
            args.overrides = [*args.overrides, f"scaling.address={args.address}"]
        kw = dict(space=args.space, scheduler=args.scheduler, trials=args.trials, seeds=args.seeds,
                  max_concurrent=args.max_concurrent, objective=args.objective, mode=args.mode,
                  name=args.name)
        if args.dry_run:
            print(tune.describe(tune.new_study(args.config, args.overrides, dry_run=True, **kw)))
            return 0
        study = tune.new_study(args.config, args.overrides, **kw)
        print(tune.describe(study), flush=True)
        res = tune.run_study(study)
    print(tune.format_result(res))
    return 0 if res.best else 1
