"""The one progress line a person watches: step, losses, images/s and ETA.

On a terminal it is a single live tqdm line; anywhere else (a CI log, a Ray Job's log, a pipe)
it is a plain line at most every `every_s` seconds and at the last step, so logs stay readable.
The engine's local context draws it directly; a Ray Train run draws it on the driver from the
small progress file rank 0 writes beside its checkpoints (see `jobs/train.py`), because Ray's
worker-side bars reach the driver's terminal through its log monitor, prefixed and re-printed.
"""
from __future__ import annotations

import os
import sys
import time

PROGRESS_FILE = "progress.json"     # in a Ray Train run's folder, rewritten at every report


def losses(m: dict, most: int = 4) -> str:
    keys = sorted(k for k, v in m.items() if k.startswith("loss") and isinstance(v, (int, float)))
    return " ".join(f"{k} {m[k]:.3f}" for k in keys[:most])


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _columns(out) -> int:
    try:
        return os.get_terminal_size(out.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


class ProgressLine:
    def __init__(self, total: int, *, desc: str = "train", out=None, every_s: float = 30.0):
        self.total, self.desc, self.every_s = total, desc, every_s
        self.out = out or sys.stderr
        self.tty = hasattr(self.out, "isatty") and self.out.isatty()
        self.bar = None
        self.first = None            # (step, time) of the first update: the rate excludes start-up
        self.printed = 0.0

    def show(self, step: int, m: dict) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = (step, now)
        s0, t0 = self.first
        rate = (step - s0) / (now - t0) if step > s0 and now > t0 else None
        eta = (self.total - step) / rate if rate else None
        info = f"{losses(m)}, {m.get('images_per_s', 0):.0f} img/s"
        if self.tty:
            if self.bar is None:
                from tqdm import tqdm
                # A pty with no size set (script(1), some CI runners) reports 0 columns, and
                # tqdm then draws nothing: fall back to a fixed width there.
                sized = _columns(self.out) > 0
                self.bar = tqdm(total=self.total, initial=step, desc=self.desc, unit="step",
                                file=self.out, dynamic_ncols=sized, ncols=None if sized else 120, leave=True,
                                bar_format="{desc} {bar:20} {n_fmt}/{total_fmt} [{elapsed}<{remaining}]{postfix}")
            self.bar.set_postfix_str(info, refresh=False)
            self.bar.update(step - self.bar.n)
            return
        if now - self.printed >= self.every_s or step >= self.total:
            self.printed = now
            print(f"{self.desc} step {step}/{self.total}  {info}  ETA {_eta(eta)}", file=self.out, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
