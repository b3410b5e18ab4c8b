"""ADA's p on a tiny training set and on a large one (issue 16): the same preset trained through
the local context for N steps with aug.kind=ada, on data.builtin_samples=<tiny> and =<large>;
prints p (and E[sign D(real)]) at every log. A benchmark that prints figures, not a test: on the
tiny set D overfits sooner, so sign(D(real)) passes the target and p should rise first.

  .venv/bin/python bench/ada_tiny.py --preset quickstart --tiny 256 --large 10000 --steps 4000 \
      --batch 32 --speed-kimg 100 --log-every 100 data.builtin=animals

On real silhouettes (data.builtin=animals) it does; on ShapeStack it does not: G redraws a tiny
set of glyph triples exactly, so D has nothing to memorise (README "Augmentation").
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from pipeline import config as C
from pipeline.data import resolve_shards, shard_counts
from pipeline.engine.context import train_local


def run(preset: str, samples: int, args) -> list[dict]:
    from jobs.train import builtin_shards       # the built-in data, written once under $GANFORGE_HOME

    cfg = C.load(preset, [f"data.builtin_samples={samples}", f"train.steps={args.steps}",
                          f"train.log_every={args.log_every}", "train.sample_every=0",
                          f"train.checkpoint_every={args.steps}", f"train.batch_size={args.batch}",
                          "scaling.num_workers=1", "tracking.samples=4", "data.loader_workers=0",
                          "aug.kind=ada", f"aug.ada_speed_kimg={args.speed_kimg}",
                          f"aug.ada_target={args.target}", *args.override])
    urls, manifest = resolve_shards(cfg.data.shards or str(builtin_shards(cfg)))
    counts = shard_counts(manifest)
    with tempfile.TemporaryDirectory() as td:
        _, ctx = train_local(cfg, {"urls": urls, "counts": counts}, td, quiet=True)
    return ctx.reports


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quickstart")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--speed-kimg", type=float, default=5.0, help="aug.ada_speed_kimg (500 in the paper)")
    ap.add_argument("--target", type=float, default=0.6)
    ap.add_argument("--tiny", type=int, default=256)
    ap.add_argument("--large", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("override", nargs="*", help="extra key=value config overrides")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {}
    for n in (args.tiny, args.large):
        t = time.perf_counter()
        out[n] = run(args.preset, n, args)
        print(f"# {args.preset}, {n} training images: {time.perf_counter() - t:.0f} s", flush=True)
    print("step  images_seen  " + "  ".join(f"p@{n:<6} sign@{n:<5}" for n in out))
    for rows in zip(*out.values()):
        print(f"{rows[0]['step']:>4}  {rows[0]['images_seen']:>11}  " +
              "  ".join(f"{r['aug_p']:<8.3f} {r['ada_sign']:<+10.3f}" for r in rows))
    # The second half of the run, when D's head start at step 0 (p rises on any set) is over.
    for n, rows in out.items():
        late = rows[len(rows) // 2:]
        print(f"{n} images, last {len(late)} logs: mean p {sum(r['aug_p'] for r in late) / len(late):.3f}, "
              f"max p {max(r['aug_p'] for r in late):.3f}, mean E[sign D(real)] "
              f"{sum(r['ada_sign'] for r in late) / len(late):+.3f}")


if __name__ == "__main__":
    main()
