"""Reconstruction against wall-clock minutes for the families with an encoder: BiGAN, ALI and
VAE-GAN on built-in shapestack, scored by the exact oracle.

    python bench/quality_encoders.py [PRESET ...] [--minutes 10] [--at 1,2,5,10] [--n 1000]
                                     [--set key=value ...] [--threads 2] [--out DIR]

Each preset (default: bigan32 ali32 vaegan32) trains through the engine's local context (the real
phases and data stream; no Ray, no MLflow) for a wall-clock budget; at each mark its checkpointed
EMA networks reconstruct n fresh images (pipeline/evaluation/reconstruction.py; scoring time not
counted), and the oracle also scores n samples for mode coverage:
  recon_glyph_acc  glyphs kept through E then G (chance: the *_chance column beside it)
  recon_triple_acc all three kept                  modes / kl  coverage of n samples
A grid per mark (PRESET_Mmin.png): 16 images beside their reconstructions. A benchmark that
prints figures, not a test: they depend on the machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

import quality_translation as QT   # its clocked training run, with this file's scores (bench/)

from pipeline.data.datasets import shapestack
from pipeline.evaluation import reconstruction as R
from pipeline.evaluation.metrics.coverage import mode_coverage
from pipeline.families import sampling


def score(gen, n: int, grid: Path | None = None) -> dict:
    images, glyphs = shapestack.generate(n, gen.resolution(), R.SEED)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    _, rec = gen.reconstruct(x)
    out = R.scores(rec, glyphs, R.SEED)
    cov = mode_coverage(shapestack.oracle(gen.sample(n, seed=1).permute(0, 2, 3, 1).numpy()))
    if grid is not None:
        sampling.write_grid(torch.stack([x[:16], rec[:16]], 1).flatten(0, 1), grid, nrow=8)
    return {**out, "modes": cov["modes"], "kl": cov["kl"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("presets", nargs="*", default=["bigan32", "ali32", "vaegan32"])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--at", default="1,2,5,10")
    ap.add_argument("--n", type=int, default=1000, help="images reconstructed (and sampled) at each mark")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="bench_out/encoders", help="grids: PRESET_Mmin.png, image | reconstruction")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    marks = sorted(m for m in (float(x) for x in a.at.split(",")) if m <= a.minutes) or [a.minutes]
    os.environ.setdefault("GANFORGE_HOME", str(Path.cwd() / ".ganforge"))
    print(f"machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), torch "
          f"{torch.__version__}, {a.threads} threads, device {a.device}, load average "
          f"{os.getloadavg()[0]:.1f} before the runs")
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for p in a.presets:
            rows += QT.run(p, a.set, marks, a.n, a.device, Path(td), None, out, score_fn=score)
    keys = [k for k in rows[0] if k not in ("preset", "minutes", "step")]
    print(f"\n{'preset':<10}{'minutes':>8}{'step':>7}" + "".join(f"{k[6:] if k.startswith('recon_') else k:>14}" for k in keys))
    for r in rows:
        print(f"{r['preset']:<10}{r['minutes']:>8.2f}{r['step']:>7}" +
              "".join(f"{r.get(k, np.nan):>14.3f}" for k in keys))


if __name__ == "__main__":
    main()
