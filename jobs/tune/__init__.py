"""Driver for one study: a Ray Tune search whose trials are full Ray Train runs.

    $GANFORGE_HOME/tune/<study>/
      study.json, space.yaml      what was asked (read back by --resume)
      tune/                       Ray Tune's experiment (Tuner.restore reads it); one folder per trial
      train/<trial_id>[-rN]/      each trial's Ray Train run(s): a new run each time a trial starts
                                  from a Tune checkpoint (PBT exploit, pause, restore)
      results.csv, summary.csv, objective_vs_params.png

Trials follow the Train V2 pattern: a function trainable (trial.run_trial) builds a TorchTrainer and
fits it. The stock `TuneReportCallback` forwards metrics and only the *path* of a checkpoint, so
Tune would hold no checkpoints: PBT could not exploit and a restored trial would start over.
`trial.ForwardToTrial` does the same job with the checkpoint handed over too: the trial function
re-reports every Train result with `ray.tune.report(metrics, checkpoint=...)`, adding the trial's
searched values and the proxy objective. When Tune stops (ASHA) or pauses (PBT) a trial, the
trial aborts its Train run the way Ctrl-C does, and the next trial reuses the process.

Objective: with in-loop evaluation on (eval.every > 0) the default is eval.best_metric (FID on the
configured extractor), minimised; trials report it every eval.every steps and carry the latest
score in between. Evaluation is off by default (each one generates eval.n_fake images and runs
the extractor over them), so without it the default is the proxy `d_gap` = d_real - d_fake:
the critic's mean score gap over the last log window (the Wasserstein estimate for a WGAN
critic), minimised - the less D separates real from fake, the better G. It is free and reported every `train.log_every` steps, which ASHA
and PBT need. Its caveat: it is only comparable between runs whose critic has a similar scale,
and gp_weight, r1_gamma and spectral norm change that scale (a stronger penalty shrinks the gap),
so it leans towards heavier regularisation. `--objective KEY --mode min|max` ranks by any
reported metric instead.

Modules: study (what was asked, validated; study.json), schedulers (ASHA, PBT, search
settings), trial (the function trainable), runs (MLflow parent and child runs), driver (Ray,
Tuner, restore), results (table, CSV, plot, registration).
"""
from jobs.tune.driver import run_study
from jobs.tune.results import format_result
from jobs.tune.study import Study, StudyResult, describe, new_study, studies_root

__all__ = ["Study", "StudyResult", "describe", "format_result", "new_study", "run_study", "studies_root"]
