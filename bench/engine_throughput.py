"""Training images/s of the engine's own step, through its local context (torch alone).

    python bench/engine_throughput.py [PRESET] [key=value ...] [--steps 60] [--device cpu]

Runs `ganforge train PRESET --local` in a temporary folder (the real phases, data stream, EMA
and reports; no Ray, no MLflow), drops the first report (warm-up) and prints the families'
mean real images per second per rank over the rest, with the machine it ran on.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import torch

from pipeline import config as C
from pipeline.data import resolve_shards, shard_counts
from pipeline.engine.context import train_local


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", nargs="?", default="quickstart")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    every = max(1, a.steps // 6)
    cfg = C.load(a.preset, [*a.overrides, f"train.steps={a.steps}", f"train.log_every={every}",
                            f"train.checkpoint_every={a.steps}", "train.sample_every=0", "eval.every=0"])
    from jobs.train import builtin_shards       # the built-in data, written once under $GANFORGE_HOME

    urls, manifest = resolve_shards(cfg.data.shards or str(builtin_shards(cfg)))
    counts = shard_counts(manifest)
    with tempfile.TemporaryDirectory() as td:
        t0 = time.perf_counter()
        _, ctx = train_local(cfg, {"urls": urls, "counts": counts}, td, device=a.device, quiet=True)
        wall = time.perf_counter() - t0
    rates = [r["images_per_s"] for r in ctx.reports[1:]] or [ctx.reports[0]["images_per_s"]]
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"{a.preset} ({C.to_dict(cfg)['model']['name']}, batch {cfg.train.batch_size}, "
          f"{cfg.data.resolution} px) on {dev}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores")
    print(f"  {statistics.mean(rates):.0f} img/s (reports after the first: "
          f"{', '.join(f'{r:.0f}' for r in rates)}); {a.steps} steps in {wall:.1f} s wall")


if __name__ == "__main__":
    main()
