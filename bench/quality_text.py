"""Text-to-image quality against wall-clock minutes: GAN-INT-CLS with each text encoder on the
built-in captioned shapestack, scored by the exact oracle and by FID.

    python bench/quality_text.py [PRESET ...] [--minutes 10] [--at 1,2,5,10] [--n 1000]
                                 [--set key=value ...] [--threads 2] [--out DIR]

Each preset (default: gan_int_cls32 gan_int_cls32_minilm) trains through the engine's local
context (the real phases and data stream; no Ray, no MLflow) for a wall-clock budget; at each mark
its checkpointed generator draws one image per caption for n captions that ask for every triple
equally (pipeline/evaluation/captions.py; scoring time not counted):
  caption_acc        all three glyphs as the caption says (chance: caption_chance beside it)
  caption_glyph_acc  per glyph                        modes / kl  coverage of those n images
  fid                against n real shapestack images (ganforge-small-shapestack: offline, fitted
                     here if missing; its numbers compare with each other only)
A grid per mark (PRESET_Mmin.png, its captions in PRESET_Mmin.txt): 8 captions, 4 seeds each.
A benchmark that prints figures, not a test: they depend on the machine.
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

from pipeline.data.captions import eval_captions
from pipeline.data.datasets import shapestack
from pipeline.evaluation import captions as CA
from pipeline.evaluation import translation as T
from pipeline.evaluation.metrics.coverage import mode_coverage
from pipeline.families import sampling


def score(gen, n: int, extractor, grid: Path | None = None) -> dict:
    caps, glyphs = eval_captions(n, CA.SEED)
    key = gen.text_input
    images = torch.cat([gen.batch(i, min(n, i + 250), seed=CA.SEED, fixed={key: caps[i:i + 250]})[0]
                        for i in range(0, n, 250)])
    out = CA.scores(images, glyphs, CA.SEED)
    cov = mode_coverage(shapestack.oracle(images))
    real = torch.from_numpy(shapestack.generate(n, gen.resolution(), 77)[0]).permute(0, 3, 1, 2)
    fid, _ = T.fid_against(sampling.to_uint8(images), real, extractor)
    if grid is not None:       # a row per caption: 4 seeds
        rows = [gen.sample(4, seed=0, fixed={key: caps[i]}) for i in range(8)]
        sampling.write_grid(torch.cat(rows), grid, nrow=4)
        grid.with_suffix(".txt").write_text("\n".join(caps[:8]) + "\n")
    return {**out, "modes": cov["modes"], "kl": cov["kl"], "fid": fid}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("presets", nargs="*", default=["gan_int_cls32", "gan_int_cls32_minilm"])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--at", default="1,2,5,10")
    ap.add_argument("--n", type=int, default=1000, help="captions drawn and scored at each mark")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="bench_out/text", help="grids: PRESET_Mmin.png, a row per caption")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    marks = sorted(m for m in (float(x) for x in a.at.split(",")) if m <= a.minutes) or [a.minutes]
    os.environ.setdefault("GANFORGE_HOME", str(Path.cwd() / ".ganforge"))
    from pipeline.evaluation.extractors import small

    if not small.default_path().is_file():
        small.fit()
    extractor = small.load()
    print(f"machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), torch "
          f"{torch.__version__}, {a.threads} threads, device {a.device}, load average "
          f"{os.getloadavg()[0]:.1f} before the runs")
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for p in a.presets:
            rows += QT.run(p, a.set, marks, a.n, a.device, Path(td), None, out,
                           score_fn=lambda gen, n, grid: score(gen, n, extractor, grid))
    keys = [k for k in rows[0] if k not in ("preset", "minutes", "step")]
    print(f"\n{'preset':<22}{'minutes':>8}{'step':>7}" + "".join(f"{k.replace('caption_', 'c_'):>12}" for k in keys))
    for r in rows:
        print(f"{r['preset']:<22}{r['minutes']:>8.2f}{r['step']:>7}" +
              "".join(f"{r.get(k, np.nan):>12.3f}" for k in keys))


if __name__ == "__main__":
    main()
