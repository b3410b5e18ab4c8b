"""The GPU suite: the engine's step eager and compiled, the loader against it, and coverage in
fixed minutes, as one table and one JSON. bench/gpu_suite.sh runs it on a bare GPU machine.

    python bench/gpu_suite.py [--out DIR] [--budget-min 9]     # CUDA: the issue-18 figures
    python bench/gpu_suite.py --tiny                           # CPU, about a minute (the suite)

1. Step: bench/step_throughput.py's arms (BigGAN-128 ch96 B=256, ProGAN at 256 px, StyleGAN2-256),
   eager and compiled, with a profile of the first arm compiled. An arm that would not fit the
   time left before the quality run is skipped and named.
2. Data: the loader (RankStream, as training reads) over 128 px JPEG shards with one loader
   worker per core, in decoded images/s of wall time, against the fastest BigGAN arm's rate.
3. Quality: bench/quality.py's run of a shapestack-32 preset through the local context for
   --quality-min minutes, modes of 1000 and KL at 0.5, 1, 2 and 5 minutes.
Imports torch, torchvision, numpy, PIL, yaml, pydantic and webdataset: no Ray, no MLflow.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch                              # noqa: E402
import torchvision                        # noqa: E402, F401

_BASE = {m.split(".")[0] for m in sys.modules}   # what the GPU machine's torch brings itself

import step_throughput as ST              # noqa: E402


def loader_rate(resolution: int, workers: int, batch: int, samples: int, seconds: float, work: Path) -> dict:
    """Decoded uint8 images/s (wall time) of training's RankStream over JPEG shards of photo-like
    content (bench/data_throughput.py's `natural`), one shard per worker at least."""
    from data_throughput import natural

    from pipeline.data import RankStream, resolve_shards, write_shards

    out = work / f"jpg{resolution}"
    per_shard = max(16, samples // max(workers, 1))
    write_shards(natural(samples, resolution), str(out), resolution=resolution,
                 classes=[str(i) for i in range(10)], source="gpu_suite", fmt="jpg", shard_size=per_shard)
    urls, _ = resolve_shards(str(out))
    with RankStream(urls, rank=0, world_size=1, batch_size=batch, resolution=resolution,
                    loader_workers=workers, seed=0) as stream:
        it = iter(stream)
        next(it)                                   # worker start-up and first shards
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            n += len(next(it).images)
        dt = time.perf_counter() - t0
    return {"resolution": resolution, "workers": workers, "batch": batch, "img_s": n / dt}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, 32 px arms, seconds per part")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=os.environ.get("OUT") or "bench_out/gpu_suite")
    ap.add_argument("--budget-min", type=float, default=9.0, help="the whole suite's wall-clock budget")
    ap.add_argument("--compile", help="step modes, as bench/step_throughput.py (default off,default on CUDA)")
    ap.add_argument("--quality-preset", default="pacgan32")
    ap.add_argument("--quality-min", type=float, help="minutes of training (default 5; tiny 0.05)")
    ap.add_argument("--quality-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override for the quality run (default: the preset's global batch of 64 in one process)")
    a = ap.parse_args(argv)
    t_start = time.monotonic()
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GANFORGE_HOME", str(out / "home"))
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    step_args = ["--device", a.device] + (["--tiny"] if a.tiny else []) + (["--compile", a.compile] if a.compile else [])
    sa = ST.parse(step_args)
    q_min = a.quality_min or (0.05 if a.tiny else 5.0)
    marks = [m for m in (0.5, 1, 2, 5) if m <= q_min] or [q_min]
    q_set = a.quality_set or (["train.batch_size=16", "data.builtin_samples=512"] if a.tiny
                              else ["train.batch_size=64"])
    res = {"device": ST.device_name(device), "torch": torch.__version__, "tiny": a.tiny}
    print(f"gpu_suite on {res['device']}, torch {torch.__version__}, budget {a.budget_min} min", flush=True)

    def left_min() -> float:
        return a.budget_min - (time.monotonic() - t_start) / 60

    with tempfile.TemporaryDirectory() as td:
        work = Path(td)
        # 1. The step. A compiled arm takes minutes on the GPU, mostly compiling.
        print("\n[1/3] the engine's step", flush=True)
        reserve = q_min + 1.0 if not a.tiny else 0.0       # the quality run and the loader
        res["step"] = ST.run(sa.arms, sa.modes, device, sa.steps, sa.warmup, profile=True,
                             minutes_left=lambda: left_min() - reserve,
                             log=lambda m: print(m, flush=True))
        res["matmul_peak_tflop_s"] = res["step"]["matmul_peak_tflop_s"]
        rows = res["step"]["rows"]
        if cuda:
            torch.cuda.empty_cache()

        # 2. The loader against the fastest 128 px consumer.
        print("\n[2/3] the loader", flush=True)
        workers = os.cpu_count() or 1
        r128 = max((r["img_s"] for r in rows if r["arm"].startswith("biggan")), default=None)
        res["data"] = loader_rate(32 if a.tiny else 128, 1 if a.tiny else workers, 16 if a.tiny else 256,
                                  64 if a.tiny else 4096, 2.0 if a.tiny else 15.0, work)
        res["data"]["model_img_s"] = r128
        res["data"]["ratio"] = res["data"]["img_s"] / r128 if r128 else None
        d = res["data"]
        print(f"  {d['resolution']} px JPEG, {d['workers']} loader workers: {d['img_s']:.0f} img/s"
              + (f", {d['ratio']:.2f}x the model's {r128:.0f} img/s" if r128 else ""), flush=True)

        save(res, out)       # so far: a failure further on loses nothing measured before it
        # 3. Coverage in fixed minutes.
        print(f"\n[3/3] {a.quality_preset}: coverage at {marks} minutes", flush=True)
        import quality as Q
        res["quality"] = Q.run(a.quality_preset, q_set, marks, 500 if a.tiny else 10000, a.device, work, out)
    res["wall_min"] = (time.monotonic() - t_start) / 60
    # What this run imported beyond torch and the standard library: what a bare GPU machine needs.
    # (Names starting with "_" are interpreter-internal, e.g. Cython's shared _cython_3_x module.)
    res["imports"] = sorted(m for m in {m.split(".")[0] for m in sys.modules} - _BASE - set(sys.stdlib_module_names)
                            if not m.startswith("_"))
    print("\n" + summary(res))
    save(res, out)
    print(f"wrote {out / 'gpu_suite.json'}")
    return res


def save(res: dict, out: Path) -> None:
    with open(out / "gpu_suite.json", "w") as f:
        json.dump(_plain(res), f, indent=1, allow_nan=False)


def _plain(x):
    """Strict JSON: NaN (an unconditional G's class accuracy) becomes null."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return None if isinstance(x, float) and x != x else x


def summary(res: dict) -> str:
    lines = [f"device {res['device']}, torch {res['torch']}, matmul peak {res['matmul_peak_tflop_s']:.3g} TFLOP/s, "
             f"{res.get('wall_min', 0):.1f} min", ST.table(res["step"])]
    lines += [f"  skipped: {s}" for s in res["step"]["skipped"]]
    d = res["data"]
    lines.append(f"loader: {d['resolution']} px JPEG, {d['workers']} workers, batch {d['batch']}: "
                 f"{d['img_s']:.0f} img/s" + (f" = {d['ratio']:.2f}x the fastest BigGAN step" if d["ratio"] else ""))
    for q in res["quality"]:
        lines.append(f"coverage {q['preset']} at {q['minutes']:.2f} min (step {q['step']}): "
                     f"{q['modes']} modes, KL {q['kl']:.3f}")
    lines.append(ST.REFERENCE)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
