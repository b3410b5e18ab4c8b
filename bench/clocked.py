"""The oracle benchmarks' common part (quality_translation, quality_encoders, quality_text): train a
preset through the engine's local context (the real phases and data stream; no Ray, no MLflow) for
a wall-clock budget, score its checkpointed networks at each mark of the training clock (scoring
time not counted), and print a table of the rows."""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from pipeline import config as C
from pipeline.data import resolve_shards
from pipeline.engine import ema
from pipeline.engine.context import LocalContext
from pipeline.families import generator as GM

# score(gen, n, grid_path, extractor) -> {name: value}; extractor is None unless main(fid=True)
Score = Callable[..., dict]


class Budget(Exception):
    """Raised from a report to end the run once the last mark is scored."""


class Clocked(LocalContext):
    """The local context, calling on_score(minutes, metrics, generator) with the checkpointed
    networks at each mark of the training clock; the time on_score takes is not counted. keep: a
    folder to copy each scored checkpoint into (checkpoint_NNNNNNN), to score it again later with
    `ganforge evaluate FOLDER`; the run's own folder is temporary."""

    def __init__(self, *a, marks, on_score, standing: int = 0, keep: Path | None = None, **k):
        super().__init__(*a, **k)
        self.marks, self.on_score, self.t0, self.paused = list(marks), on_score, time.monotonic(), 0.0
        self.standing, self.keep = standing, keep
        if keep is not None:        # a bad --keep fails now, not at the first mark minutes later
            keep.mkdir(parents=True, exist_ok=True)

    def report(self, metrics, checkpoint_dir):
        super().report(metrics, checkpoint_dir)
        at = (time.monotonic() - self.t0 - self.paused) / 60
        # A run given its own train.steps (an lr decay must know where it ends) may end before
        # the last mark: its last step is scored then, in place of the marks it did not reach.
        end = int(metrics["step"]) >= self.cfg.train.steps
        if checkpoint_dir is None or not self.marks or (at < self.marks[0] and not end):
            return
        t = time.monotonic()
        while self.marks and (self.marks[0] <= at or end):
            self.marks.pop(0)
        gen = GM.from_checkpoint(checkpoint_dir)
        ema.standing_stats(gen.family, gen.nets, gen.family.ema, self.standing, seed=self.cfg.train.seed)
        self.on_score(at, metrics, gen)
        if self.keep is not None:
            shutil.copytree(checkpoint_dir, self.keep / f"checkpoint_{int(metrics['step']):07d}", dirs_exist_ok=True)
        self.paused += time.monotonic() - t
        if not self.marks:
            raise Budget


def budget_steps(preset: str, overrides: list[str]) -> list[str]:
    """The train.steps override that lets the wall-clock budget end a run: none where the
    preset or its overrides decay the lr (optim.lr_decay_from), whose end is train.steps; the
    run then ends at that step or the last mark, whichever comes first."""
    decays = C.load(preset, list(overrides)).optim.lr_decay_from is not None
    return [] if decays else ["train.steps=100000000"]


def bench_config(preset: str, overrides: list[str], extra: tuple[str, ...] = ()) -> tuple[C.Config, int]:
    """(the config a clocked benchmark trains, its optim.ema_bn_samples): the preset with its
    overrides, train.steps from budget_steps, checkpoints every 50 steps so that a mark is scored
    soon after it passes (a few ms at these sizes), no evaluation or grids inside the loop, then
    `extra`; standing statistics are taken off the clock (standing_off_clock)."""
    cfg = C.load(preset, [*budget_steps(preset, overrides), *overrides, "train.checkpoint_every=50", "eval.every=0",
                          "train.log_every=50", "train.sample_every=0", "train.keep_checkpoints=1", *extra])
    return standing_off_clock(cfg)


def standing_off_clock(cfg: C.Config) -> tuple[C.Config, int]:
    """(cfg without optim.ema_bn_samples, the count it had). The benchmarks checkpoint every 50
    steps so that a mark is scored soon after it passes; the engine's standing-statistics pass at
    each of those checkpoints would cost ten times what it costs a run that checkpoints every 500.
    The pass serves only what is checkpointed (the next step copies the live statistics back), so
    Clocked makes the same pass (same function, same seed) on the generator it scores, unclocked."""
    n = cfg.optim.ema_bn_samples
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, ema_bn_samples=0)), n


def run(preset, overrides, marks, n, device, work: Path, out: Path, score: Score,
        extractor=None, keep: Path | None = None) -> list[dict]:
    """Train `preset` for the marks' minutes; -> a row per mark, with score's figures. `preset`
    may carry its own overrides after `+` (an arm: PRESET+key=value+...). keep: see Clocked."""
    from jobs.train import builtin_shards
    from pipeline.engine import loop

    name, *own = preset.split("+")
    cfg, standing = bench_config(name, [*overrides, *own], ("scaling.num_workers=1", "data.loader_workers=0"))
    urls, _ = resolve_shards(cfg.data.shards or str(builtin_shards(cfg)))
    rows, safe = [], re.sub(r"[^\w.=-]+", "_", preset)     # for file names

    def on_score(minutes, metrics, gen):
        step = int(metrics["step"])
        s = score(gen, n, out / f"{safe}_{minutes:.0f}min.png", extractor)
        s.update({k: metrics[k] for k in ("aug_p",) if k in metrics})     # ADA's p where it runs
        rows.append({"preset": preset, "minutes": round(minutes, 2), "step": step, **s})
        print(f"  {preset:<12} {minutes:>6.2f} min  step {step:>6}  " +
              "  ".join(f"{k} {v:.3f}" for k, v in s.items()), flush=True)

    ctx = Clocked(cfg, work / safe, device, None, True, marks=marks, on_score=on_score, standing=standing,
                  keep=keep / safe if keep else None)
    try:
        loop.run(cfg, ctx, {"urls": urls, "counts": None})
    except Budget:
        pass
    return rows


def main(doc: str, presets: list[str], score: Score, *, n_help: str, out: str, fid: bool | str = False,
         label: Callable[[str], str] = str, sets: list[str] = ()) -> list[dict]:
    """The benchmark's command line: train each preset, score it at the marks, print the table
    (columns named by `label`). fid: fit or load ganforge-small-shapestack (offline) for score,
    or the small extractor of that built-in set (fid="animals"). sets: default --set overrides."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("presets", nargs="*", default=presets)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--at", default="1,2,5,10")
    ap.add_argument("--n", type=int, default=1000, help=n_help)
    ap.add_argument("--set", action="append", default=list(sets), metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=out, help="grids: PRESET_Mmin.png")
    ap.add_argument("--keep", type=Path, help="copy each scored checkpoint to KEEP/PRESET/checkpoint_STEP")
    a = ap.parse_args()
    outdir = Path(a.out)
    outdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    marks = sorted(m for m in (float(x) for x in a.at.split(",")) if m <= a.minutes) or [a.minutes]
    os.environ.setdefault("GANFORGE_HOME", str(Path.cwd() / ".ganforge"))
    extractor = None
    if fid:
        from pipeline.evaluation.extractors import small

        data = fid if isinstance(fid, str) else "shapestack"
        if not small.default_path(data).is_file():
            small.fit(data=data)
        extractor = small.load(data=data)
    print(f"machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), torch "
          f"{torch.__version__}, {a.threads} threads, device {a.device}, load average "
          f"{os.getloadavg()[0]:.1f} before the runs" + (f"; FID extractor {extractor.name}" if fid else ""))
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for p in a.presets:
            rows += run(p, a.set, marks, a.n, a.device, Path(td), outdir, score, extractor, a.keep)
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in ("preset", "minutes", "step")]
    w = max(12, *(len(label(k)) + 2 for k in keys))
    pw = max(len(p) for p in a.presets) + 2
    print(f"\n{'preset':<{pw}}{'minutes':>8}{'step':>7}" + "".join(f"{label(k):>{w}}" for k in keys))
    for r in rows:
        print(f"{r['preset']:<{pw}}{r['minutes']:>8.2f}{r['step']:>7}" +
              "".join(f"{r.get(k, float('nan')):>{w}.3f}" for k in keys))
    return rows
