"""Images per second of `ganforge shards --from-folder` against a bare PIL loop, on a folder it writes.

    python bench/shards_throughput.py [--n 3000] [--size 96] [--resolution 64] [--format png] [--rounds 3]

Writes N photo-like JPEGs (size x size, 10 class folders) into a temporary folder, then times:
- bare PIL, one process: open + convert RGB + ImageOps.fit to resolution (bicubic) + encode, per file;
- ours (pipeline.data.convert.convert_folder, what the CLI runs) with 1 worker and with one per core:
  scan, seeded order, full decode, resize, encode, tar writing, sha256, manifest.
Figures are wall-clock images/s, best of --rounds; "per core" divides by the worker processes.
The CLI's own start (imports) is timed once apart. Prints the machine it ran on.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.data.convert import convert_folder, default_workers  # noqa: E402


def write_folder(root: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """Smooth random colour fields plus fine noise (photo-like JPEG costs), 10 class folders."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC), np.int16)
        img = np.clip(img + rng.integers(-10, 11, img.shape), 0, 255).astype(np.uint8)
        path = root / f"class{i % 10}" / f"img{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def bare(paths: list[Path], resolution: int, fmt: str) -> float:
    t0 = time.perf_counter()
    for path in paths:
        with Image.open(path) as im:
            out = ImageOps.fit(im.convert("RGB"), (resolution, resolution), Image.Resampling.BICUBIC)
            buf = io.BytesIO()
            out.save(buf, "PNG" if fmt == "png" else "JPEG", **({} if fmt == "png" else {"quality": 95}))
    return len(paths) / (time.perf_counter() - t0)


def ours(root: Path, out: Path, resolution: int, fmt: str, workers: int) -> float:
    t0 = time.perf_counter()
    m = convert_folder(root, out, resolution=resolution, fmt=fmt, workers=workers, progress=False)
    rate = m["samples"] / (time.perf_counter() - t0)
    shutil.rmtree(out)
    return rate


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{cpu}, {default_workers()} cores usable ({os.cpu_count()} logical), {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, Pillow {PIL.__version__}, "
            f"load average {load}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--size", type=int, default=96, help="source image side")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--format", choices=["png", "jpg"], default="png")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=default_workers(), help="the N of the N-worker run")
    a = p.parse_args()

    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "photos", Path(tmp) / "out"
        t0 = time.perf_counter()
        paths = write_folder(root, a.n, a.size)
        print(f"folder: {a.n} JPEGs {a.size}x{a.size} in 10 class folders, written in "
              f"{time.perf_counter() - t0:.1f} s; output {a.resolution} px {a.format}")

        b = max(bare(paths, a.resolution, a.format) for _ in range(a.rounds))
        o1 = max(ours(root, out, a.resolution, a.format, 1) for _ in range(a.rounds))
        on = max(ours(root, out, a.resolution, a.format, a.workers) for _ in range(a.rounds))
        print(f"{'method':<44}{'img/s':>9}{'per core':>10}{'vs bare':>9}")
        print(f"{'bare PIL open+fit+encode, 1 process':<44}{b:>9.0f}{b:>10.0f}{1:>9.2f}")
        print(f"{'ganforge shards --workers 1':<44}{o1:>9.0f}{o1:>10.0f}{o1 / b:>9.2f}")
        print(f"{f'ganforge shards --workers {a.workers}':<44}{on:>9.0f}{on / a.workers:>10.0f}"
              f"{on / a.workers / b:>9.2f}")

        # The command as a user runs it, start-up (imports) included, once.
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jobs.cli", "shards", "--from-folder", str(root), "--out",
                        str(out), "--resolution", str(a.resolution), "--format", a.format, "--workers",
                        str(a.workers)], check=True, stdout=subprocess.DEVNULL,
                       cwd=Path(__file__).resolve().parents[1])
        wall = time.perf_counter() - t0
        print(f"the CLI end to end, --workers {a.workers}: {wall:.1f} s for {a.n} images "
              f"({a.n / wall:.0f} img/s with start-up)")


if __name__ == "__main__":
    main()
