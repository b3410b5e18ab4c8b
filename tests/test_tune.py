"""Ray Tune studies: search-space validation, ASHA, PBT, and a study driver killed mid-way then
resumed. Real Ray, real MLflow (sqlite), real shards. The resume study's trials are 2-worker Ray
Train runs; the ASHA and PBT studies run `--in-process` trials (one process each, no Train run).

On 2 cores a trial's cost is its processes' start-up (the trainable, Ray Train's controller and
helper actors, the workers), not its steps: each study runs as few trials and workers as shows
what it tests.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.engine import checkpoint
from pipeline import config as C
from pipeline.tuning import search_space as S

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- spaces (fast, no Ray)

def _space(tmp_path, text: str) -> str:
    p = tmp_path / f"space-{uuid.uuid4().hex[:6]}.yaml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("name", ["smoke_gp", "dcgan_gp", "dcgan_lr"])
def test_space_presets_load_and_validate(name):
    sp = S.load(name)
    for preset in ("smoke", "wgangp32", "dcgan64"):
        S.validate(sp, C.to_dict(C.load(preset)))
    assert sp.searched and sp.mutations()


def test_pbt_explore_stays_inside_the_space():
    sp = S.load("dcgan_lr")
    muts = sp.mutations()
    assert muts["optim.d_steps_per_g"] == [1, 2, 5]            # a choice is explored by neighbours
    assert sp.clamp({"optim.d_lr": 1.2e-3, "optim.d_steps_per_g": 5}) == {"optim.d_lr": 1.0e-3,
                                                                          "optim.d_steps_per_g": 5}
    steps = S.Space(name="t", path="t", params={"optim.d_steps_per_g": S.parse_param("optim.d_steps_per_g",
                                                                                    "randint(1, 4)")})
    assert steps.clamp({"optim.d_steps_per_g": 4}) == {"optim.d_steps_per_g": 3}   # randint's b is exclusive


def test_space_domains_become_tune_domains():
    from ray import tune

    assert S.parse_param("loss.gp_weight", "loguniform(0.1, 100)").domain().lower == 0.1
    assert isinstance(S.parse_param("a.b", "uniform(0, 1)").domain(), tune.search.sample.Float)
    assert S.parse_param("a.b", "randint(1, 4)").probe_values() == [1, 3]
    assert S.parse_param("a.b", "choice([hinge, wasserstein])").domain().categories == ["hinge", "wasserstein"]
    assert S.parse_param("a.b", "grid([1, 2])").domain() == {"grid_search": [1, 2]}
    assert S.parse_param("a.b", 5).domain() == 5
    cfg = S.apply(C.to_dict(C.load("smoke")), {"loss.gp_weight": 3, "optim.d_steps_per_g": 2})
    assert cfg.loss.gp_weight == 3.0 and cfg.optim.d_steps_per_g == 2


@pytest.mark.parametrize("text, key", [
    ("loss.gp_wieght: loguniform(0.1, 100)", "loss.gp_wieght"),        # unknown key
    ("los.gp_weight: uniform(0, 1)", "los.gp_weight"),                  # unknown section
    ("loss.gp_weight: uniform(-1, 1)", "loss.gp_weight"),               # bound the config refuses
    ("loss.kind: choice([hinge, softmax])", "loss.kind"),               # a listed value refused
    ("optim.d_steps_per_g: randint(0, 3)", "optim.d_steps_per_g"),
    ("optim.d_steps_per_g: choice([1.5, 2])", "optim.d_steps_per_g"),   # float for an int
    ("data.resolution: choice([16, 32])", "data.resolution"),           # fixed per study
    ("loss.gp_weight: loguniform(0, 1)", "loss.gp_weight"),             # malformed domain
    ("loss.gp_weight: uniform(5, 1)", "loss.gp_weight"),
    ("loss.gp_weight: choice(1, 2)", "loss.gp_weight"),
])
def test_bad_space_names_the_key(tmp_path, text, key):
    with pytest.raises(C.ConfigError) as e:
        S.validate(S.load(_space(tmp_path, f"params:\n  {text}\n")), C.to_dict(C.load("smoke")))
    assert str(e.value).startswith(key), str(e.value)


def test_cli_fails_before_starting_naming_the_key(tmp_path):
    from jobs.cli import main

    home = Path(os.environ["GANFORGE_HOME"])
    before = set((home / "tune").glob("*")) if (home / "tune").exists() else set()
    bad = _space(tmp_path, "params:\n  loss.gp_wieght: loguniform(0.1, 100)\n")
    assert main(["tune", "smoke", "--space", bad, "--trials", "2"]) == 2
    assert main(["tune", "smoke", "--space", "smoke_gp", "loss.gp_weight=3"]) == 2   # set twice
    assert main(["tune", "smoke", "--space", "smoke_gp", "--objective", "fid"]) == 2  # never reported
    assert main(["tune", "smoke", "--space", "smoke_gp", "--scheduler", "pbt", "--seeds", "2"]) == 2
    assert main(["tune", "smoke", "--space", "smoke_gp", "--in-process", "scaling.num_workers=2"]) == 2
    assert main(["tune", "smoke", "--space", "smoke_gp", "train.steps=12", "--dry-run"]) == 0
    after = set((home / "tune").glob("*")) if (home / "tune").exists() else set()
    assert after == before                       # nothing written, nothing started


@pytest.mark.parametrize("family", ["pix2pix", "cyclegan", "stargan"])
def test_translator_spaces_rank_by_the_familys_own_stat(family, tmp_path):
    from jobs import tune

    sp = S.load(family)
    S.validate(sp, C.to_dict(C.load(f"{family}32")))
    assert sp.mutations() and all(k.startswith(("model.", "optim.")) for k in sp.searched)
    study = tune.new_study(f"{family}32", [], space=family, dry_run=True)
    assert (study.objective, study.mode) == ({"pix2pix": "l1"}.get(family, "cycle"), "min")
    # no single D: the d_gap proxy is not reported, and saying so beats a NaN objective
    with pytest.raises(C.ConfigError, match="'d_gap' is not reported") if family != "pix2pix" else \
            contextlib.nullcontext():
        tune.new_study(f"{family}32", [], space=family, objective="d_gap", dry_run=True)


def test_in_process_trials_need_one_worker_and_hold_its_cpus(tmp_path):
    from jobs import tune
    from jobs.tune import trial

    with pytest.raises(C.ConfigError, match=r"^scaling.num_workers: --in-process"):
        _offline_study(tmp_path, in_process=True)                 # smoke: 2 workers
    study = _offline_study(tmp_path, in_process=True, overrides=["scaling.num_workers=1",
                                                                 "scaling.cpus_per_worker=2"])
    assert "in its own process (no Ray Train run), 2.0 CPU" in tune.describe(study)
    # the trial is the worker: it holds the worker's CPUs, not the sliver a Train trial holds
    assert trial.trainable(study)._resources.required_resources == {"CPU": 2.0}
    assert trial.trainable(_offline_study(tmp_path))._resources.required_resources == {"CPU": 0.01}


def test_objective_defaults_and_eval_scores(tmp_path):
    from jobs import tune
    from jobs.tune.trial import Objective

    assert _offline_study(tmp_path).objective == "d_gap"
    evaluated = tune.new_study("smoke", ["eval.every=4"], space=_space(tmp_path, "params:\n  loss.gp_weight: uniform(1, 2)\n"),
                               dry_run=True)
    assert (evaluated.objective, evaluated.mode) == ("fid", "min")      # eval.best_metric
    with pytest.raises(C.ConfigError, match="eval/"):
        _offline_study(tmp_path, objective="eval/fid")                  # not evaluated in the loop
    fill = Objective("fid").fill
    assert math.isnan(fill({"loss_d": 1.0})["fid"])                     # NaN before the first score
    assert fill({"eval/ganforge-small-shapestack/fid": 12.5}) == {"fid": 12.5}
    assert fill({"loss_d": 1.0}) == {"fid": 12.5}                       # carried to later reports
    assert fill({"fid": 3.0}) == {}


def test_study_log_counts_the_trial_that_just_ended(capsys):
    from types import SimpleNamespace as T

    from jobs.tune.progress import StudyTable

    table = StudyTable("s", "d_gap", "min", ["loss.gp_weight"], steps=8)
    a = T(trial_id="a", status="TERMINATED", last_result={"step": 8, "d_gap": 0.3}, config={"loss.gp_weight": 1.0})
    b = T(trial_id="b", status="RUNNING", last_result={"step": 2, "d_gap": 0.2}, config={"loss.gp_weight": 10.0})
    c = T(trial_id="c", status="PENDING", last_result=None, config={"loss.gp_weight": 0.1})
    table.on_trial_complete(0, [a, b, c], b)          # Tune calls it while b is still RUNNING
    assert capsys.readouterr().out == ("[tune] trial b done at step 2: d_gap 0.2  loss.gp_weight=10  "
                                       "(best so far)  (2/3 trials ended)\n")


def _offline_study(tmp_path, **kw):
    """A Study object for the result helpers; nothing is started or written."""
    from jobs import tune

    space = _space(tmp_path, "params:\n  loss.gp_weight: loguniform(0.1, 100)\n")
    return tune.new_study("smoke", kw.pop("overrides", []), space=space, dry_run=True, **kw)


def test_seeds_repeat_each_sampled_configuration(tmp_path):
    from ray.tune.search.variant_generator import generate_variants

    from jobs.tune import schedulers

    study = _offline_study(tmp_path, seeds=3, trials=2)
    space = schedulers.param_space(study, study.space())
    variants = [v for _ in range(study.trials)
                for _, v in generate_variants({"config": space}, constant_grid_search=True)]
    by_weight: dict[float, list[int]] = {}
    for v in variants:
        by_weight.setdefault(v["config"]["loss.gp_weight"], []).append(v["config"]["train.seed"])
    assert len(by_weight) == 2 and all(seeds == [0, 1, 2] for seeds in by_weight.values())


def test_summary_ranks_by_mean_over_seeds_and_plots(tmp_path):
    from jobs.tune import results

    study = _offline_study(tmp_path, seeds=2, scheduler="asha")
    study.dir = str(tmp_path)

    def row(tid, w, seed, gap, status="completed"):
        return {"trial_id": tid, "status": status, "step": 8 if status == "completed" else 2, "d_gap": gap,
                "loss.gp_weight": w, "train.seed": seed, "checkpoint": f"/c/{tid}", "error": ""}

    rows = [row("a0", 1.0, 0, 0.30), row("a1", 1.0, 1, 0.50),     # mean 0.40, one lucky seed
            row("b0", 10.0, 0, 0.35), row("b1", 10.0, 1, 0.37),   # mean 0.36: the best
            row("c0", 50.0, 0, 0.10, "stopped"), row("c1", 50.0, 1, 0.20)]  # ASHA stopped one
    summary = results.summarize(study, rows, ["loss.gp_weight"])
    assert [s["loss.gp_weight"] for s in summary] == [10.0, 1.0, 50.0]
    best = summary[0]
    assert (best["n"], best["best_trial"]) == (2, "b0")
    assert best["mean"] == pytest.approx(0.36) and best["std"] == pytest.approx(0.0141421, rel=1e-4)
    assert summary[2]["mean"] == 0.20 and summary[2]["completed"] == 1   # the stopped seed is left out
    png = results.plot_objective(study, study.space(), rows, summary, ["loss.gp_weight"])
    assert png.stat().st_size > 5000


# ---------------------------------------------------------------- studies (slow, Ray)

def _results(study_dir: Path, trial_id: str) -> list[dict]:
    return [json.loads(line) for line in (study_dir / "tune" / trial_id / "result.json").read_text().splitlines()]


def _children(client: MlflowClient, parent) -> dict[str, object]:
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return {r.data.tags["ganforge.trial_id"]: r for r in runs}


@pytest.mark.slow
def test_asha_study_stops_early_tracks_and_registers(ray_session, smoke_shards, tmp_path):
    from jobs import tune

    # A grid in a fixed order, two trials at a time: the smoke DCGAN's critic gap shrinks as
    # the penalty grows, so the last (gp 0.1) is worse at the first rung than the two before
    # it, which have both passed it by then: ASHA stops it there (and gp 10 too, when it
    # reaches the rung after gp 100).
    space = _space(tmp_path, "params:\n  loss.gp_weight: grid([100.0, 10.0, 0.1])\n"
                             "asha: {grace_period: 2, reduction_factor: 2}\n")
    load, t0 = os.getloadavg()[0], time.monotonic()     # load before the study: other work
    # In-process trials and no DataLoader worker process: on 2 cores every process started
    # costs seconds, and a Train trial starts a controller and a worker (~90 s for this study
    # alone, ~30 s in-process, the same d_gap per trial). The resume test runs 2-worker Train trials.
    study = tune.new_study("smoke", ["tracking.model_alias=tuned", "scaling.num_workers=1",
                                     "data.loader_workers=0"],
                           space=space, scheduler="asha", in_process=True,
                           max_concurrent=2, name=f"asha-{uuid.uuid4().hex[:6]}")
    res = tune.run_study(study)
    seconds = time.monotonic() - t0
    print(tune.format_result(res))
    # A figure to read, not to assert: the host's load decides it.
    print(f"3-trial ASHA study: {seconds:.0f} s (load average {load:.1f} before it, {os.cpu_count()} cores)")

    rows = {r["trial_id"]: r for r in res.rows}
    assert len(rows) == 3 and not any(r["error"] for r in rows.values())
    stopped = [r for r in rows.values() if r["status"] == "stopped"]
    assert 0.1 in [r["loss.gp_weight"] for r in stopped] and all(r["step"] < 8 for r in stopped), rows
    assert sorted(r["loss.gp_weight"] for r in rows.values()) == [0.1, 10.0, 100.0]
    for r in rows.values():
        assert [x["loss.gp_weight"] for x in _results(study.path, r["trial_id"])] == [r["loss.gp_weight"]] * r["reports"]
    assert res.best_trial["status"] == "completed" and res.best["loss.gp_weight"] == 100.0

    with open(res.csv) as f:
        table = list(csv.DictReader(f))
    assert {t["trial_id"] for t in table} == set(rows) and {"status", "d_gap", "loss.gp_weight"} <= set(table[0])
    assert res.plot.stat().st_size > 5000

    client = MlflowClient(study.tracking_uri)
    parent = client.get_run(study.parent_run_id)
    p = parent.data.params
    assert parent.info.status == "FINISHED"
    assert (p["space.loss.gp_weight"], p["scheduler"], p["objective"], p["mode"]) == \
        ("grid([100.0, 10.0, 0.1])", "asha", "d_gap", "min")
    assert p["best.loss.gp_weight"] == "100.0" and parent.data.metrics["trials_stopped"] == len(stopped)
    assert {"results.csv", "summary.csv", "objective_vs_params.png", "space.yaml"} <= \
        {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = _children(client, parent)
    assert set(children) == set(rows)
    for tid, run in children.items():
        assert float(run.data.params["loss.gp_weight"]) == rows[tid]["loss.gp_weight"]
        assert run.data.params["scaling.num_workers"] == "1"
        reported = list(range(2, rows[tid]["step"] + 1, 2))
        assert [m.step for m in client.get_metric_history(run.info.run_id, "d_gap")] == reported
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss_d")]   # rank 0's
        # A stopped trial's workers may log a report past the one that stopped it.
        assert steps == reported if rows[tid]["status"] == "completed" else steps[:len(reported)] == reported
        assert run.info.status == ("KILLED" if rows[tid]["status"] == "stopped" else "FINISHED")

    name, version = res.registered.split("/")
    mv = client.get_model_version(name, version)
    assert mv.tags["ganforge.study"] == study.name and mv.tags["ganforge.trial_id"] == res.best_trial["trial_id"]
    assert mv.tags["ganforge.study_run_id"] == study.parent_run_id
    assert mv.run_id == children[res.best_trial["trial_id"]].info.run_id
    assert str(client.get_model_version_by_alias(name, "tuned").version) == version


@pytest.mark.slow
def test_pbt_exploit_continues_from_another_trials_checkpoint(ray_session, smoke_shards):
    from jobs import tune

    # smoke_gp: perturb every 4 steps, synchronously, bottom half copies top half: with two
    # trials, one exploits the other at step 4.
    # In-process trials (no Train run: each restart would start a controller and a worker) and
    # no DataLoader process: what is tested is the exploit, which both kinds of trial share (the
    # other studies run Train trials). A reused run folder would resume its own newest
    # checkpoint instead of the donor's, just as a reused Train run name would.
    study = tune.new_study("smoke", ["tracking.register=false", "scaling.num_workers=1",
                                     "data.loader_workers=0"], space="smoke_gp", scheduler="pbt",
                           trials=2, max_concurrent=2, in_process=True, name=f"pbt-{uuid.uuid4().hex[:6]}")
    res = tune.run_study(study)
    print(tune.format_result(res))
    assert {r["status"] for r in res.rows} == {"completed"}

    rows = {r["trial_id"]: r for r in res.rows}
    exploited = [r for r in rows.values() if r["origin_trial"] not in ("", r["trial_id"])]
    assert len(exploited) == 1, rows
    tid, donor = exploited[0]["trial_id"], exploited[0]["origin_trial"]
    assert exploited[0]["train_run"] == f"{tid}-r1"          # a new Train run for the new start
    start = checkpoint.load(study.path / "tune" / donor / "checkpoint_000000")
    assert start["step"] == 4                                # what the exploit copied

    # The history lives in MLflow (Tune's own result.json of a trial restarted this quickly
    # can lose the rows before the restart: its logger re-copies a not yet synced file).
    client = MlflowClient(study.tracking_uri)
    children = _children(client, client.get_run(study.parent_run_id))
    run = children[tid]
    weights = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss.gp_weight")]
    gaps = [m.step for m in client.get_metric_history(run.info.run_id, "d_gap")]
    # Continued at step 6 from the donor's step-4 checkpoint (not from scratch), and the new,
    # perturbed weight took effect in the same trial.
    assert gaps == [2, 4, 6, 8] and [s for s, _ in weights] == [2, 4, 6, 8]
    w_before, w_after = weights[0][1], weights[-1][1]
    assert weights[1][1] == w_before and weights[2][1] == w_after
    assert w_before == pytest.approx(float(run.data.params["loss.gp_weight"]))
    assert w_after == pytest.approx(rows[tid]["loss.gp_weight"]) and w_after != pytest.approx(w_before)
    donor_w = float(children[donor].data.params["loss.gp_weight"])
    assert w_after != pytest.approx(donor_w) and 0.1 <= w_after <= 100   # explored, inside the range
    assert run.data.tags["ganforge.resumed_from"].startswith(donor + ":")


def _experiment_statuses(exp_dir: Path) -> dict[str, str]:
    out = {}
    for f in exp_dir.glob("experiment_state-*.json"):
        try:
            for trial_json, _ in json.loads(f.read_text())["trial_data"]:
                t = json.loads(trial_json)
                out[t["trial_id"]] = t["status"]
        except (ValueError, KeyError):         # caught mid-write: look again
            pass
    return out


@pytest.mark.slow
def test_killed_study_resumes_without_rerunning_finished_trials(ray_session, smoke_shards, tmp_path):
    # The driver runs as a user runs it (a `ganforge tune` process) and joins the session's Ray
    # with --address: one Ray on the host, and killing the driver ends its job, so Ray stops
    # its trials and frees their resources; the resumed driver joins the same cluster.
    name = f"resume-{uuid.uuid4().hex[:6]}"
    study_dir = Path(os.environ["GANFORGE_HOME"]) / "tune" / name
    address = ["--address", ray_session.get_runtime_context().gcs_address]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [str(Path(sys.executable).with_name("ganforge")), "tune"]       # as a user runs it
    log = open(tmp_path / "driver.log", "wb")
    # One trial at a time, 4 steps, 2 workers per trial: trials are multi-worker Train runs
    # (the other studies run one worker per trial).
    proc = subprocess.Popen(cmd + ["smoke", "--space", "smoke_gp", "--scheduler", "none", "--trials", "2",
                                   "--max-concurrent", "1", "--name", name, *address,
                                   "tracking.register=false", "scaling.num_workers=2", "train.steps=4",
                                   "data.loader_workers=0"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            statuses = _experiment_statuses(study_dir / "tune")
            # Tune adds the second trial to its saved state only once the first has ended (one
            # at a time): kill when the state holds both, so the resumed driver has one to finish.
            if "TERMINATED" in statuses.values() and len(statuses) == 2:
                break
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"no trial finished in 300 s: {statuses}"
            time.sleep(0.2)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)      # the driver only: it started no Ray of its own
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        log.close()
    finished = sorted(t for t, s in statuses.items() if s == "TERMINATED")
    assert len(finished) == 1 and len(statuses) == 2, statuses
    # (Not the finished trial's result.json rows here: Tune may sync that file after it has
    # written the experiment state, so a driver killed at once can leave it empty.)
    runs_before = sorted(p.name for p in (study_dir / "train").iterdir())

    out = subprocess.run(cmd + ["--resume", name, *address], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    print(out.stdout[-1500:])

    with open(study_dir / "results.csv") as f:
        rows = {r["trial_id"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(statuses)
    assert {r["status"] for r in rows.values()} == {"completed"}
    for t in finished:             # not rerun: no new Train run, its 2 reports once (and in MLflow, below)
        assert len(_results(study_dir, t)) == int(rows[t]["reports"]) == 2
        assert [p.name for p in (study_dir / "train").iterdir() if p.name.startswith(t)] == [t]
    for r in rows.values():                           # 2-worker Train runs: one data position per rank
        assert len(checkpoint.load(r["checkpoint"])["data_positions"]) == 2
    assert set(runs_before) <= {p.name for p in (study_dir / "train").iterdir()}
    study = json.loads((study_dir / "study.json").read_text())
    client = MlflowClient(study["tracking_uri"])
    parent = client.get_run(study["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = _children(client, parent)
    assert set(children) == set(rows)
    for t, run in children.items():                   # one MLflow run per trial, also the resumed one
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss_d")]
        # The killed trial may have logged step 2 before the kill and again after the restart
        # (its first checkpoint is at step 4).
        assert steps == [2, 4] if t in finished else sorted(set(steps)) == [2, 4]
        assert run.info.status == "FINISHED" and run.data.params["scaling.num_workers"] == "2"
