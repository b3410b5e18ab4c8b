"""Feature extraction throughput (features/s) of the evaluation extractors, batch 64.

    python bench/eval_throughput.py [--batches 3] [--resolution 32] [--threads N] [--amp]

The InceptionV3 runs with random weights (same architecture and cost as the FID network, no
download); the small extractor with its fitted weights when present, else random ones. CPU always,
CUDA when available. Also reports the generator-to-metric costs that do not depend on the
extractor: the Fréchet distance of 2048-d statistics and the shapestack oracle.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pipeline.evaluation.extractors import Extractor, inception, small

BATCH = 64


def rate(ex: Extractor, device: str, resolution: int, batches: int, amp: bool) -> float:
    ex.to(device)
    x = torch.rand(BATCH, 3, resolution, resolution, device=device) * 2 - 1
    with torch.autocast(device, dtype=torch.bfloat16, enabled=amp and device == "cuda"):
        ex.features(x)                       # warm-up: allocator, cuDNN autotune
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(batches):
            ex.features(x)
        if device == "cuda":
            torch.cuda.synchronize()
    return batches * BATCH / (time.perf_counter() - t)


def small_extractor() -> tuple[Extractor, str]:
    try:
        return small.load(), "fitted"
    except FileNotFoundError:
        return Extractor(small.SmallNet(), name=small.NAME, sha256="random", resize=small.RESIZE,
                         standard=False), "random weights"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=3, help="timed batches per row (CPU Inception: ~10 s each)")
    p.add_argument("--resolution", type=int, default=32, help="generated image size fed in (resized inside)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    sm, sm_kind = small_extractor()
    rows = [("InceptionV3 (FID arch, random weights)", inception.load(random_weights=True), 2048, True),
            (f"{small.NAME} ({sm_kind})", sm, small.FEATURES, False)]
    print(f"torch {torch.__version__}, {args.threads} CPU threads, batch {BATCH}, input {args.resolution} px"
          + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"))
    print(f"{'extractor':<48} {'dim':>5} {'device':>6} {'features/s':>12} {'10k images':>11}")
    for name, ex, dim, heavy in rows:
        for dev in devices:
            n = args.batches * (1 if heavy and dev == "cpu" else 20)   # ~equal seconds per row
            r = rate(ex, dev, args.resolution, n, args.amp)
            print(f"{name:<48} {dim:>5} {dev:>6} {r:>12,.0f} {10000 / r:>10.1f}s")
        ex.to("cpu")

    from pipeline.data.datasets import shapestack
    from pipeline.evaluation.metrics.fid import frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.random((4096, 2048)), rng.random((4096, 2048))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    from threadpoolctl import threadpool_limits
    t = time.perf_counter()
    with threadpool_limits(args.threads):
        frechet_distance(a.mean(0), s1, b.mean(0), s2)
    print(f"\nFréchet distance of 2048-d statistics: {time.perf_counter() - t:.2f} s (CPU, float64)")
    images = shapestack.generate(4096, args.resolution, 0)[0]
    t = time.perf_counter()
    shapestack.oracle(images)
    print(f"shapestack oracle: {4096 / (time.perf_counter() - t):,.0f} images/s (CPU)")


if __name__ == "__main__":
    main()
