"""Does BigGAN learn its classes on 2 CPU workers? A learning benchmark, not a test.

    python bench/biggan_glyphs.py [key=value ...] [--seed 0]

Trains the shipped biggan32_cpu preset through Ray Train (2 workers x 16, 2 D steps per G step,
class-conditional on ShapeStack's first glyph) for 250 steps, then reads the step-250 sample grid
back from MLflow: column c was asked for glyph c, and ShapeStack's exact oracle says which glyph
each cell's red channel shows. Prints the loss trend, the oracle's reading per column and
overall (chance is 0.1) and the in-loop evaluation's oracle accuracy, with the machine and time.

Measured on 2 quiet cores (seeds 0, 1, 2): 0.68, 0.79 and 0.60 of the grid read right, 7 of 10
columns at 0.5 or better, in about 2 minutes. It was a suite test until the suite outgrew its
15 minutes; the 2-worker BigGAN path stays tested in tests/test_families.py.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
import uuid

import numpy as np
from mlflow.tracking import MlflowClient
from PIL import Image

from jobs.train import run_training
from pipeline import config as C
from pipeline.data.datasets import shapestack

CELL, PAD = 32, 1           # the logged grid: 10 x 10 cells of 32 px, 1 px apart


def _history(client, run_id, key):
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def grid_cells(path) -> np.ndarray:
    """The logged PNG grid -> uint8 [100, 32, 32, 3], row-major (cell i is class i % 10)."""
    grid = np.asarray(Image.open(path).convert("RGB"))
    assert grid.shape == (PAD + 10 * (CELL + PAD),) * 2 + (3,), grid.shape
    return np.stack([grid[PAD + r * (CELL + PAD):][:CELL, PAD + c * (CELL + PAD):][:, :CELL]
                     for r in range(10) for c in range(10)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ganforge-bench-")
    os.environ.setdefault("GANFORGE_HOME", os.path.join(work, "home"))
    t0 = time.time()
    s = run_training(C.load("biggan32_cpu", [
        f"train.run_name=bg-{uuid.uuid4().hex[:8]}", f"train.storage_path={work}", f"train.seed={a.seed}",
        "tracking.register=false", "tracking.log_checkpoint=false", "train.log_every=25",
        "train.checkpoint_every=250", "train.sample_every=250", "eval.every=250", "eval.n_fake=200",
        *a.overrides]))
    client = MlflowClient(s.tracking_uri)
    loss_d, loss_g = _history(client, s.mlflow_run_id, "loss_d"), _history(client, s.mlflow_run_id, "loss_g")
    cells = grid_cells(client.download_artifacts(s.mlflow_run_id, s.last_grid, work))
    asked = np.arange(100) % 10
    read = shapestack.oracle(cells)[:, 0]
    per_class = [float((read[asked == k] == k).mean()) for k in range(10)]
    acc = _history(client, s.mlflow_run_id, "eval/oracle_accuracy")
    print(f"\nbiggan32_cpu, seed {a.seed}: {s.steps} steps in {time.time() - t0:.0f} s on "
          f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}, torch threads "
          f"{__import__('torch').get_num_threads()})")
    print(f"  loss_d first -> mean of last 4 : {loss_d[0]:.3f} -> {np.mean(loss_d[-4:]):.3f} "
          f"(finite: {all(map(math.isfinite, loss_d + loss_g))})")
    print(f"  grid read right, per column    : {[round(x, 1) for x in per_class]}")
    print(f"  grid read right, overall       : {(read == asked).mean():.2f}  (chance 0.10); "
          f"columns >= 0.5: {sum(x >= 0.5 for x in per_class)} of 10")
    print(f"  in-loop eval oracle accuracy   : {acc[-1] if acc else float('nan'):.2f}")


if __name__ == "__main__":
    main()
