"""A finished (or resumed-and-finished) study: results table (printed, CSV), configurations
ranked by mean over seeds, the objective-vs-weight plot, the parent run's summary, and the
best trial's generator registered with the study as lineage."""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

from jobs.tune import runs
from jobs.tune.study import SEED_KEY, Study, StudyResult
from pipeline.tuning import search_space as S


def _status(r, steps: int) -> str:
    if r.error is not None:
        return "error"
    return "completed" if int((r.metrics or {}).get("step", 0)) >= steps else "stopped"


def _rows(study: Study, grid, keys: list[str]) -> list[dict]:
    steps = study.config["train"]["steps"]
    rows = []
    for r in grid:
        m = r.metrics or {}
        cfg = r.config or {}
        # The folder, not metrics["trial_id"]: after a PBT exploit a trial's last result is the
        # cloned trial's until it reports again.
        row = {"trial_id": Path(r.path).name, "status": _status(r, steps),
               "step": int(m.get("step", 0)), study.objective: m.get(study.objective, math.nan)}
        for k in keys:
            row[k] = m.get(k, cfg.get(k))       # the value it last trained with (PBT changes it)
        if study.seeds > 1:
            row[SEED_KEY] = cfg.get(SEED_KEY)
        row["reports"] = int(m.get("training_iteration", 0))
        # Which trial's weights it last continued from (PBT exploit; itself after a restore).
        row["origin_trial"], row["train_run"] = m.get("origin_trial", ""), m.get("train_run", "")
        row["checkpoint"] = r.checkpoint.path if r.checkpoint else ""
        row["error"] = str(r.error).strip().splitlines()[-1][:200] if r.error else ""
        rows.append(row)
    return rows


def summarize(study: Study, rows: list[dict], keys: list[str]) -> list[dict]:
    """One row per configuration: mean and std of the objective over its seeds. The mean is over
    the trials that ran the whole budget (a stopped trial's last value is from fewer steps, not
    comparable), or over all of them when none did. Ranked by the share of its trials that ran
    the whole budget (ASHA stopped the others as worse than their peers), then by that mean."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["status"] != "error":
            groups.setdefault(tuple(repr(row[k]) for k in keys), []).append(row)
    sign = 1 if study.mode == "min" else -1
    out = []
    for members in groups.values():
        done = [r for r in members if r["status"] == "completed"]
        vals = [r[study.objective] for r in (done or members) if not _nan(r[study.objective])]
        best_in = sorted((r for r in (done or members) if r["checkpoint"] and not _nan(r[study.objective])),
                         key=lambda r: sign * r[study.objective])
        out.append({**{k: members[0][k] for k in keys}, "n": len(members), "completed": len(done),
                    "mean": statistics.fmean(vals) if vals else math.nan,
                    "std": statistics.stdev(vals) if len(vals) > 1 else math.nan,
                    "best_trial": best_in[0]["trial_id"] if best_in else "",
                    "trials": " ".join(r["trial_id"] for r in members)})
    out.sort(key=lambda s: (-s["completed"] / s["n"], math.inf if _nan(s["mean"]) else sign * s["mean"]))
    for i, s in enumerate(out, 1):
        s["rank"] = i
    return out


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def plot_objective(study: Study, sp: S.Space, rows: list[dict], summary: list[dict], keys: list[str]) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    keys = [k for k in keys if k != SEED_KEY]
    pts = [r for r in rows if r["status"] != "error" and not _nan(r[study.objective])]
    if not keys or not pts:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, k in zip(axes[0], keys):
        for status, marker in (("completed", "o"), ("stopped", "x")):
            sel = [r for r in pts if r["status"] == status]
            if sel:
                ax.scatter([_axis(r[k]) for r in sel], [r[study.objective] for r in sel],
                           marker=marker, label=f"{status} trial", alpha=0.8)
        if study.seeds > 1:
            ok = [s for s in summary if not _nan(s["mean"])]
            ax.errorbar([_axis(s[k]) for s in ok], [s["mean"] for s in ok], yerr=[0.0 if _nan(s["std"]) else s["std"] for s in ok],
                        fmt="s", color="black", capsize=3, label=f"mean ± std ({study.seeds} seeds)")
        if k in sp.params and sp.params[k].log_scale:
            ax.set_xscale("log")
            # Ticks at 1, 2, 5 per decade: a range inside one decade (20..90) still gets labels.
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(k)
        ax.set_ylabel(f"{study.objective} ({study.mode})")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{study.name}: {study.scheduler}, {len(pts)} trials", fontsize=9)
    fig.tight_layout()
    out = study.path / "objective_vs_params.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _axis(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _register(study: Study, trial: dict, client) -> str | None:
    """Register the best trial's generator (tracking.register/model_name/model_alias of the base
    config) with the study as lineage. A registry hiccup must not fail a finished study."""
    from pipeline.tracking import registry

    t = study.config["tracking"]
    run_id = runs.find_child(study, client, trial["trial_id"])
    try:
        with registry.session(study.tracking_uri) as c:
            lineage = registry.run_lineage(c, run_id)
        lineage.update({"ganforge.study": study.name, "ganforge.study_run_id": study.parent_run_id,
                        "ganforge.trial_id": trial["trial_id"], "ganforge.tune_objective": study.objective,
                        "ganforge.tune_objective_value": f"{trial[study.objective]:.6g}",
                        "ganforge.tune_scheduler": study.scheduler})
        mv = registry.register_checkpoint(trial["checkpoint"], tracking_uri=study.tracking_uri, run_id=run_id,
                                          name=t["model_name"], alias=t["model_alias"], lineage=lineage)
    except Exception as e:  # noqa: BLE001 - reported; `ganforge register RUN_ID` can do it later
        print(f"[ganforge] registration failed: {e}; retry with `ganforge register {run_id}`", flush=True)
        return None
    return f"{mv.name}/{mv.version}"


def finish(study: Study, grid, t0: float) -> StudyResult:
    """Results table (printed, CSV), plot, parent-run summary, child-run statuses, registration."""
    from mlflow.entities import Metric, Param, RunStatus
    from mlflow.tracking import MlflowClient

    sp = study.space()
    keys = list(sp.searched)
    rows = _rows(study, grid, keys)
    summary = summarize(study, rows, keys)
    csv_path, sum_path = study.path / "results.csv", study.path / "summary.csv"
    _write_csv(csv_path, sorted(rows, key=lambda r: r["trial_id"]))
    _write_csv(sum_path, summary)
    plot = plot_objective(study, sp, rows, summary, keys)
    best = summary[0] if summary and summary[0]["best_trial"] else None
    best_trial = next((r for r in rows if best and r["trial_id"] == best["best_trial"]), None)

    client = MlflowClient(study.tracking_uri)
    for r in rows:
        rid = runs.find_child(study, client, r["trial_id"])
        if rid is None:
            continue
        client.set_tag(rid, "ganforge.tune_status", r["status"])
        if client.get_run(rid).info.status == "RUNNING":    # stopped, failed, or killed with the driver
            status = {"error": RunStatus.FAILED, "stopped": RunStatus.KILLED}.get(r["status"], RunStatus.FINISHED)
            client.set_terminated(rid, RunStatus.to_string(status))
    pid = study.parent_run_id
    registered = client.get_run(pid).data.tags.get("ganforge.registered")
    if best_trial and study.config["tracking"]["register"] and not registered:
        registered = _register(study, best_trial, client)
        if registered:
            client.set_tag(pid, "ganforge.registered", registered)
    if best:
        have = client.get_run(pid).data.params
        params = {f"best.{k}": str(best[k]) for k in keys if f"best.{k}" not in have}
        if "best.trial_id" not in have:
            params["best.trial_id"] = best_trial["trial_id"] if best_trial else ""
        ts = int(time.time() * 1000)
        std = [] if _nan(best["std"]) else [Metric(f"best_{study.objective}_std", float(best["std"]), ts, 0)]
        client.log_batch(pid, params=[Param(k, v) for k, v in params.items()], metrics=std + [
            Metric(f"best_{study.objective}_mean", float(best["mean"]), ts, 0),
            Metric("trials_total", float(len(rows)), ts, 0),
            Metric("trials_stopped", float(sum(r["status"] == "stopped" for r in rows)), ts, 0),
            Metric("trials_error", float(sum(r["status"] == "error" for r in rows)), ts, 0)])
    for p in (csv_path, sum_path, plot, study.path / "study.json"):
        if p is not None:
            client.log_artifact(pid, str(p))
    client.set_terminated(pid, RunStatus.to_string(RunStatus.FINISHED if best else RunStatus.FAILED))
    return StudyResult(study=study, rows=rows, summary=summary, best=best, best_trial=best_trial,
                       registered=registered, csv=csv_path, summary_csv=sum_path, plot=plot,
                       seconds=time.time() - t0)


def format_result(res: StudyResult) -> str:
    """The printed summary: every trial, then every configuration ranked, then the winner."""
    import pandas as pd

    st, keys = res.study, list(res.study.space().searched)
    cols = ["trial_id", "status", "step", st.objective, *keys] + ([SEED_KEY] if st.seeds > 1 else [])
    trials = pd.DataFrame(sorted(res.rows, key=lambda r: r["trial_id"]))[cols]
    out = [f"\nstudy {st.name}: {len(res.rows)} trials in {res.seconds:.0f} s "
           f"({st.scheduler}; objective {st.objective}, {st.mode})", trials.to_string(index=False)]
    if st.seeds > 1:
        summ = pd.DataFrame(res.summary)[["rank", *keys, "n", "completed", "mean", "std", "best_trial"]]
        out += ["\nconfigurations (mean and std over seeds):", summ.to_string(index=False)]
    if res.best:
        vals = ", ".join(f"{k}={res.best[k]:.4g}" if isinstance(res.best[k], float) else f"{k}={res.best[k]}"
                         for k in keys)
        out.append(f"\nbest: {vals}  {st.objective} {res.best['mean']:.4g}"
                   + (f" ± {res.best['std']:.2g} over {res.best['completed'] or res.best['n']} seeds"
                      if st.seeds > 1 and not _nan(res.best["std"]) else "")
                   + f"  (trial {res.best['best_trial']})")
    else:
        out.append("\nbest: none (every trial failed; see the error column in results.csv)")
    out += [f"  results    : {res.csv}", f"  by config  : {res.summary_csv}",
            f"  plot       : {res.plot or '(none)'}", f"  MLflow     : parent run {st.parent_run_id}",
            f"  registered : {res.registered or '(not registered)'}"]
    return "\n".join(out)
