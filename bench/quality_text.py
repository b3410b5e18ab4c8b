"""Text-to-image quality against wall-clock minutes: GAN-INT-CLS with each text encoder, and StackGAN
on captions, on the built-in captioned shapestack, scored by the exact oracle and by FID.

    python bench/quality_text.py [PRESET ...] [--minutes 10] [--at 1,2,5,10] [--n 1000]
                                 [--set key=value ...] [--threads 2] [--out DIR]

Each preset (default: gan_int_cls32 gan_int_cls32_minilm stackgan32_text) trains through the
engine's local context (the real phases and data stream; no Ray, no MLflow) for a wall-clock
budget; at each mark its checkpointed generator draws one image per caption for n captions that
ask for every triple equally (pipeline/evaluation/captions.py; scoring time not counted):
  caption_acc        all three glyphs as the caption says (chance: caption_chance beside it)
  caption_glyph_acc  per glyph                        modes / kl  coverage of those n images
  fid                against n real shapestack images (ganforge-small-shapestack: offline, fitted
                     here if missing; its numbers compare with each other only)
A grid per mark (PRESET_Mmin.png, its captions in PRESET_Mmin.txt): 8 captions, 4 seeds each.
A benchmark that prints figures, not a test: they depend on the machine.
"""
from __future__ import annotations

from pathlib import Path

import torch

import clocked   # the clocked training run and command line shared by the oracle benchmarks (bench/)

from pipeline.data.captions import eval_captions
from pipeline.data.datasets import shapestack
from pipeline.evaluation import captions as CA
from pipeline.evaluation import translation as T
from pipeline.evaluation.metrics.coverage import mode_coverage
from pipeline.families import sampling


def score(gen, n: int, grid: Path | None, extractor) -> dict:
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


if __name__ == "__main__":
    clocked.main(__doc__, ["gan_int_cls32", "gan_int_cls32_minilm", "stackgan32_text"], score, fid=True,
                 n_help="captions drawn and scored at each mark", out="bench_out/text",
                 label=lambda k: k.replace("caption_", "c_"))
