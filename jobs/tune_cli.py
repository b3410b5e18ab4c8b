"""`ganforge tune`: a Ray Tune study over a search space (jobs/tune/). One of COMMANDS, added to
the group in jobs/cli.py, whose main() handles its errors.

    ganforge tune CONFIG --space NAME [--trials N] [--scheduler asha|pbt|none] [--seeds K]
                  [--max-concurrent M] [--objective KEY --mode min|max] [--name STUDY]
                  [--in-process] [k=v ...]
    ganforge tune --resume STUDY

The k=v overrides may come before, between or after the options.
"""
from __future__ import annotations

import click

from jobs.cli import overrides_argument, verbose_option


@click.command(short_help="search loss weights (or any config keys) with Ray Tune")
@click.argument("config", required=False)
@overrides_argument
@click.option("--space", help="search space: preset in jobs/configs/spaces (smoke_gp, dcgan_gp, "
              "dcgan_lr) or a YAML file of `dotted.key: loguniform(a, b)|uniform|randint|choice|grid`")
@click.option("--trials", type=int, help="configurations to sample (PBT: the population); a grid "
              "space runs its whole grid per sample (default: 1 with a grid, else 8)")
@click.option("--scheduler", type=click.Choice(["asha", "pbt", "none"]), default="asha",
              help="trial scheduler (default: asha)")
@click.option("--seeds", type=int, default=1, help="run each configuration K times (train.seed, "
              "train.seed+1, ...) and rank by the mean (asha/none)")
@click.option("--max-concurrent", type=int, help="trials at once (default: as many as the "
              "cluster's CPUs/GPUs hold Train workers for)")
@click.option("--objective", help="reported metric to rank by (default: the space's; else "
              "eval.best_metric when eval.every > 0; else the proxy d_gap)")
@click.option("--mode", type=click.Choice(["min", "max"]), help="default: the space's, else min")
@click.option("--name", help="study name (default: SPACE-TIME); its folder is $GANFORGE_HOME/tune/NAME")
@click.option("--address", help="join this Ray cluster (the scaling.address override; with "
              "--resume it replaces the study's own)")
@click.option("--in-process", is_flag=True, help="train each trial in its own Tune process, "
              "without a Ray Train run (scaling.num_workers=1): no Train controller and worker "
              "processes to start per trial; Tune's trial restarts replace Train's worker restarts")
@click.option("--resume", metavar="STUDY", help="continue a study (name or folder) after its driver died")
@click.option("--dry-run", is_flag=True, help="validate, print the study and exit (writes nothing)")
@verbose_option
def tune(config, overrides, space, trials, scheduler, seeds, max_concurrent, objective, mode, name,
         address, in_process, resume, dry_run, verbose) -> int:
    """Search loss weights (or any config keys) with Ray Tune; each trial is a Ray Train run,
    tracked in MLflow; the best generator is registered.

    CONFIG is a preset name (see jobs/configs) or the path to a YAML file; KEY=VALUE are dotted
    overrides for every trial, e.g. train.steps=2000, before or after the options.
    """
    from jobs import tune as T

    if resume:
        if config or overrides or space:
            raise click.UsageError("--resume: give only the study; its config and space are in "
                                   "its study.json")
        study = T.Study.load(resume)
        if address:
            study.config["scaling"]["address"] = address
        res = T.run_study(study, resume=True, verbose=verbose)
    else:
        if not config or not space:
            raise click.UsageError("needs CONFIG and --space NAME (or --resume STUDY)")
        overrides = [*overrides, *([f"scaling.address={address}"] if address else [])]
        kw = dict(space=space, scheduler=scheduler, trials=trials, seeds=seeds,
                  max_concurrent=max_concurrent, objective=objective, mode=mode, name=name,
                  in_process=in_process)
        if dry_run:
            print(T.describe(T.new_study(config, overrides, dry_run=True, **kw)))
            return 0
        study = T.new_study(config, overrides, **kw)
        print(T.describe(study), flush=True)
        res = T.run_study(study, verbose=verbose)
    print(T.format_result(res))
    return 0 if res.best else 1


COMMANDS = [tune]
