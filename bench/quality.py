"""Mode coverage against wall-clock minutes: does a preset cover ShapeStack's 1000 modes?

    python bench/quality.py PRESET [PRESET ...] [--minutes 30] [--at 1,2,5,10,20,30]
                            [--n 10000] [--set key=value ...] [--out bench_out/quality] [--device cpu]
                            [--keep DIR]

A PRESET may carry its own overrides after `+`, one arm per token, e.g. augmentation on a tiny
training set (issue 16; the table then also gives the modes the training images hold):

    python bench/quality.py stylegan2_32 stylegan2_32+aug.kind=diffaugment stylegan2_32+aug.kind=ada \
        --set data.builtin_samples=128 --minutes 6 --at 2,4,6

Trains each preset through the engine's local context (the real phases, data stream, EMA; no Ray,
no MLflow) for a wall-clock budget and, at each of the fixed minutes, scores its sampled generator
(the EMA copy where the family keeps one) with ShapeStack's exact oracle: modes hit (of 1000), KL
of the mode histogram to uniform (nats), and the oracle's class accuracy for conditional models;
`glyphs` is the part of the KL that each channel's glyph frequencies carry alone (the three
channels' KL to 1/10, summed; each channel's in the CSV and the per-mark lines). Scoring time is
not counted as training time. Prints a table, writes quality.csv, quality.png (modes and KL
against minutes) and grid_ARM.png (100 samples at the latest mark) in --out.

Literature, stacked MNIST with 1000 modes (VEEGAN 2017, PacGAN 2018 tables): DCGAN 99 modes
KL 3.40; Unrolled GAN 48.7 / 4.32; VEEGAN 150 / 2.95; PacDCGAN 1000 / about 0.06.
It is a benchmark, not a test: its figures depend on the machine, and it says which.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image

from clocked import Budget, Clocked, bench_config   # the clocked local training run (bench/)

from pipeline import config as C
from pipeline.data import resolve_shards
from pipeline.data.datasets import shapestack
from pipeline.evaluation.metrics.coverage import class_accuracy, mode_coverage


def score(G, n: int) -> dict:
    glyphs = shapestack.oracle(G.sample(n, seed=0).permute(0, 2, 3, 1).numpy())
    out = mode_coverage(glyphs)
    # The share of KL that each channel's glyph frequencies carry on their own (the sum of the
    # three channels' KL to 1/10): what is left of the KL is how the glyphs are combined.
    m = np.stack([np.bincount(glyphs[:, c], minlength=10) for c in range(3)]) / len(glyphs)
    out["kl_channels"] = [float((r[r > 0] * np.log(r[r > 0] * 10)).sum()) for r in m]
    out["kl_glyphs"] = sum(out["kl_channels"])
    if G.num_classes:
        out["oracle_accuracy"] = class_accuracy(glyphs, np.arange(n) % G.num_classes)
    return out


def training_modes(cfg: C.Config) -> int | None:
    """Distinct ShapeStack modes in the built-in training set (the most a G of it can cover)."""
    if cfg.data.shards or cfg.data.builtin != "shapestack":
        return None
    _, glyphs = shapestack.generate(cfg.data.builtin_samples, cfg.data.resolution, seed=0)  # as builtin_shards
    return int(len(np.unique(shapestack.mode_index(glyphs))))


def run(arm: str, overrides: list[str], marks: list[float], n: int, device: str, work: Path,
        out: Path, keep: Path | None = None) -> list[dict]:
    from jobs.train import builtin_shards

    preset, *own = arm.split("+")
    # The run ends at the last mark, not at train.steps, unless an override sets train.steps or
    # the lr decays (optim.lr_decay_from: its end is train.steps): then at whichever comes first.
    cfg, standing = bench_config(preset, [*overrides, *own])
    have = training_modes(cfg)
    if have is not None and cfg.data.builtin_samples < 1000 * 5:
        print(f"  {arm}: the {cfg.data.builtin_samples} training images hold {have} of the 1000 modes", flush=True)
    urls, _ = resolve_shards(cfg.data.shards or str(builtin_shards(cfg)))
    rows, name = [], re.sub(r"[^\w.=-]+", "_", arm)    # for file names

    def on_score(minutes, metrics, G):
        s = score(G, n)
        # The grid at the latest mark (10 x 10; a conditional G's columns are its classes).
        save_image(G.sample(100, seed=1).float() / 255, out / f"grid_{name}.png", nrow=10)
        step = int(metrics["step"])
        rows.append({"preset": arm, "minutes": round(minutes, 2), "step": step,
                     "images_seen": int(metrics.get("images_seen", 0)),
                     "modes": s["modes"], "kl": round(s["kl"], 4), "kl_glyphs": round(s["kl_glyphs"], 4),
                     "kl_glyphs_rgb": "/".join(f"{k:.4f}" for k in s["kl_channels"]),
                     "oracle_accuracy": round(s.get("oracle_accuracy", float("nan")), 3),
                     "training_modes": have if have is not None else "",
                     **({"aug_p": round(metrics["aug_p"], 3)} if "aug_p" in metrics else {})})
        r = rows[-1]
        print(f"  {arm:<16} {r['minutes']:>6.2f} min  step {step:>7}  {r['modes']:>4} modes  "
              f"KL {r['kl']:.3f} (glyphs {r['kl_glyphs']:.3f} = R/G/B {r['kl_glyphs_rgb']})  acc {r['oracle_accuracy']}" + (f"  p {r['aug_p']}" if "aug_p" in r else ""),
              flush=True)

    from pipeline.engine import loop
    ctx = Clocked(cfg, work / name, device, None, True, marks=marks, on_score=on_score,
                  standing=standing, keep=keep / name if keep else None)
    try:
        loop.run(cfg, ctx, {"urls": urls, "counts": None})
    except Budget:
        pass
    return rows


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:          # a bare GPU machine: the table and the CSV say the same
        print(f"no matplotlib: {path} not drawn")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for preset in dict.fromkeys(r["preset"] for r in rows):
        rs = [r for r in rows if r["preset"] == preset]
        a.plot([r["minutes"] for r in rs], [r["modes"] for r in rs], marker="o", label=preset)
        b.plot([r["minutes"] for r in rs], [r["kl"] for r in rs], marker="o", label=preset)
    a.set(xlabel="training minutes", ylabel="modes covered (of 1000)", ylim=(0, 1000))
    b.set(xlabel="training minutes", ylabel="KL to uniform (nats)")
    a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("presets", nargs="+")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--at", default="1,2,5,10,20,30", help="minutes to score at (up to --minutes)")
    ap.add_argument("--n", type=int, default=10000, help="samples scored at each mark")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every preset")
    ap.add_argument("--out", default="bench_out/quality")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--keep", type=Path, help="copy each scored checkpoint to KEEP/ARM/checkpoint_STEP "
                    "(the runs' own folders are temporary), to score again with `ganforge evaluate`")
    a = ap.parse_args()
    marks = sorted(m for m in (float(x) for x in a.at.split(",")) if m <= a.minutes) or [a.minutes]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GANFORGE_HOME", str(Path.cwd() / ".ganforge"))
    print(f"machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, device {a.device}, "
          f"load average {os.getloadavg()[0]:.1f} before the runs")
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for preset in a.presets:
            rows += run(preset, a.set, marks, a.n, a.device, Path(td), out, a.keep)
    with open(out / "quality.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
        w.writeheader()
        w.writerows(rows)
    plot(rows, out / "quality.png")
    w = max(16, *(len(r["preset"]) + 1 for r in rows))
    print(f"\n{'preset':<{w}}{'minutes':>8}{'step':>9}{'modes':>7}{'KL':>8}{'glyphs':>8}{'acc':>7}{'of':>6}{'p':>7}")
    for r in rows:
        print(f"{r['preset']:<{w}}{r['minutes']:>8.2f}{r['step']:>9}{r['modes']:>7}{r['kl']:>8.3f}{r['kl_glyphs']:>8.3f}"
              f"{r['oracle_accuracy']:>7}{r['training_modes']:>6}{r.get('aug_p', ''):>7}")
    first = {}
    for r in rows:
        if r["modes"] >= 900 and r["preset"] not in first:
            first[r["preset"]] = r
    for p in a.presets:
        r = first.get(p)
        print(f"{p}: " + (f"900 modes first at {r['minutes']} min (KL {r['kl']})" if r else "never reached 900 modes"))
    print(f"wrote {out / 'quality.csv'} and {out / 'quality.png'}")


if __name__ == "__main__":
    main()
