"""The study's live table on the driver, in place of Ray Tune's own output (boxes per trial
start and end with every metric, a status table every 30 s, TensorBoard hints).

A Tune callback: Tune calls it in the driver process. On a terminal the table redraws in place
(cursor up, clear) at most once a second; elsewhere (a log file, a Ray Job) each trial's end is
one line, so the log reads top to bottom.
"""
from __future__ import annotations

import math
import sys
import time
from collections import Counter

from ray.tune import Callback

STATUS = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "paused", "TERMINATED": "done",
          "ERROR": "failed"}
MAX_ROWS = 20          # running trials first, then the best finished ones


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)


class StudyTable(Callback):
    def __init__(self, name: str, objective: str, mode: str, keys: list[str], steps: int):
        self.name, self.objective, self.mode, self.keys, self.steps = name, objective, mode, keys, steps
        out = self.out
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.t0, self.drawn, self.lines, self.dirty = time.monotonic(), 0.0, 0, False

    @property
    def out(self):
        # Looked up, not stored: Tune pickles its callbacks with the experiment state, and a
        # stream (pytest's capture, a pty) does not pickle.
        return sys.stdout

    # ---------------------------------------------------------------- Tune's hooks

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.dirty = True

    def on_trial_start(self, iteration, trials, trial, **info):
        self.dirty = True

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trials, trial, "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trials, trial, "failed")

    def on_step_end(self, iteration, trials, **info):
        if self.tty and self.dirty and time.monotonic() - self.drawn >= 1.0:
            self._draw(trials)

    def on_experiment_end(self, trials, **info):
        if self.tty:
            self._draw(trials)

    # ---------------------------------------------------------------- rendering

    def _value(self, trial) -> float:
        v = (trial.last_result or {}).get(self.objective)
        return float(v) if isinstance(v, (int, float)) else math.nan

    def _best(self, trials):
        done = [t for t in trials if not math.isnan(self._value(t))]
        if not done:
            return None
        return (min if self.mode == "min" else max)(done, key=self._value)

    def _ended(self, trials, trial, how: str) -> None:
        self.dirty = True
        if self.tty:
            self._draw(trials)
            return
        best = self._best(trials)
        vals = " ".join(f"{k}={_fmt(trial.config.get(k))}" for k in self.keys)
        mark = "  (best so far)" if best is trial else ""
        # Tune calls on_trial_complete/error before it sets the trial's final status.
        n_done = sum(t is trial or t.status in ("TERMINATED", "ERROR") for t in trials)
        print(f"[tune] trial {trial.trial_id} {how} at step {(trial.last_result or {}).get('step', 0)}: "
              f"{self.objective} {_fmt(self._value(trial))}  {vals}{mark}  "
              f"({n_done}/{len(trials)} trials ended)", file=self.out, flush=True)

    def table(self, trials) -> list[str]:
        best = self._best(trials)
        counts = Counter(STATUS.get(t.status, t.status) for t in trials)
        elapsed = int(time.monotonic() - self.t0)
        head = (f"study {self.name}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                + f" | {elapsed // 60}:{elapsed % 60:02d}")
        if best is not None:
            head += f" | best {self.objective} {_fmt(self._value(best))} ({best.trial_id})"
        sign = 1 if self.mode == "min" else -1
        order = sorted(trials, key=lambda t: (t.status != "RUNNING", math.isnan(self._value(t)),
                                              sign * self._value(t) if not math.isnan(self._value(t)) else 0))
        shown = order[:MAX_ROWS]
        rows = [["trial", "status", "step", self.objective, *self.keys]]
        for t in shown:
            r = t.last_result or {}
            rows.append([t.trial_id + (" *" if t is best else ""), STATUS.get(t.status, t.status),
                         f"{r.get('step', 0)}/{self.steps}", _fmt(self._value(t)),
                         *(_fmt(t.config.get(k)) for k in self.keys)])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [head] + ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        if len(order) > len(shown):
            lines.append(f"  ... {len(order) - len(shown)} more (all of them in results.csv at the end)")
        return lines

    def _draw(self, trials) -> None:
        lines = self.table(trials)
        # Up to the first line of the previous table, clear to the end of the screen, redraw.
        clear = f"\x1b[{self.lines}F\x1b[J" if self.lines else ""
        self.out.write(clear + "\n".join(lines) + "\n")
        self.out.flush()
        self.lines, self.drawn, self.dirty = len(lines), time.monotonic(), False
