"""Training images/s of the engine's own step, eager and compiled: TFLOP/s, peak memory, and the
fraction of a bf16 matmul peak measured in the same process.

    python bench/step_throughput.py [ARM ...] [--compile off,default] [--steps 32] [--profile]
    python bench/step_throughput.py --tiny          # CPU, 32 px, seconds (the suite runs this)

An ARM is a preset with its own overrides after `+` (default: biggan128 with one D step per G
step, as the reference code times; progan256 at its last stage; stylegan2_256). Each arm builds
its family exactly as `ganforge train` does (loop.build, the local context's wrap, loop.wrap's
torch.compile) and times loop.train_step, the code the training loop runs at every step (the
family's phases with their intervals, losses, optimizer steps, EMA updates), on batches made once
on the device: the model's consumption rate. The loader's rate is measured apart (gpu_suite.py).
img/s counts the real images a step draws. FLOPs: torch.utils.flop_counter over one period of
eager steps (the least common multiple of the phases' intervals; forward and backward, not the
optimizers). Imports torch and the engine (pydantic and yaml for the config): no Ray, no MLflow.
"""
from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch                                       # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import flop_registry  # noqa: E402

from pipeline import config as C                   # noqa: E402
from pipeline.data.fields import Image, Label      # noqa: E402
from pipeline.engine import loop                   # noqa: E402
from pipeline.engine.context import LocalContext   # noqa: E402
from pipeline.families.spec import Ctx             # noqa: E402

GPU_ARMS = ["biggan128+optim.d_steps_per_g=1", "progan256", "stylegan2_256"]
# Tiny CPU arms: the same families and code paths at 32 px, a few steps each.
# StyleGAN2's lazy phases every 2 steps instead of 4 and 16: the same code, a 2-step period.
TINY_ARMS = ["biggan32_cpu+train.batch_size=4+optim.d_steps_per_g=1", "progan32+model.phase_batch=[4,4,4,4]",
             "stylegan2_32+train.batch_size=4+model.pl_every=2+loss.r1_every=2+model.channel_max=16"]
# Issue 18's reference figures, one H100, BigGAN 128 px ch=96 B=256 (BigGAN-PyTorch's code).
REFERENCE = "BigGAN-128 reference (H100): fp32 259.6, bf16 351.5, bf16+compile 777 img/s; target 1100"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, seconds: float = 1.0) -> float:
    """TFLOP/s of a square matmul: bf16 8192^3 on a GPU, fp32 1024^3 on a CPU."""
    n, dt = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
    for _ in range(3):
        a @ b
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            a @ b
        reps += 10
        _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def _batch(fam, cfg, device, nhwc: bool) -> dict:
    n, r = fam.batch_size(), cfg.data.resolution
    out = {}
    for k, f in fam.fields.items():
        if isinstance(f, Image):
            x = torch.rand(n, 3, r, r, device=device) * 2 - 1
            out[k] = x.contiguous(memory_format=torch.channels_last) if nhwc else x
        elif isinstance(f, Label):
            out[k] = torch.randint(0, max(1, getattr(cfg.model, "num_classes", 0)), (n,), device=device)
        else:
            raise SystemExit(f"{fam.name}: field {k!r} ({type(f).__name__}) has no synthetic batch here")
    return out


class _FlopCount(TorchDispatchMode):
    """torch.utils.flop_counter's per-op formulas without FlopCounterMode's module tracker, whose
    backward hooks break autograd.grad (WGAN-GP's and R1's double backward)."""
    total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


class Arm:
    """A family built from an arm's config, at its last growth stage, with one synthetic batch."""

    def __init__(self, arm: str, mode: str | None, device: torch.device):
        preset, *own = arm.split("+")
        self.cfg = C.load(preset, [*own, "scaling.num_workers=1", f"train.compile={mode or 'off'}"])
        self.device, self.mode = device, mode
        nhwc = loop.channels_last(self.cfg, device)
        self.fam, self.nets, self.emas, self.opts = loop.build(self.cfg, device, nhwc)
        self.fam.on_progress(10 ** 15, self.nets, self.emas, self.opts)   # a growing family's last stage
        self.phases = self.fam.phases()
        # The local context wraps as `ganforge train --local` does (one process: no DDP).
        run_dir = tempfile.mkdtemp(prefix="ganforge-step-")
        atexit.register(shutil.rmtree, run_dir, ignore_errors=True)
        ctx = LocalContext(self.cfg, run_dir, device, quiet=True)
        self.wrapped = loop.wrap(ctx, self.nets, mode)
        self.batch = _batch(self.fam, self.cfg, device, nhwc)
        self.lctx = Ctx(step=0, device=device, autocast=loop.autocast(self.cfg, device))
        self.period = math.lcm(*(p.every for p in self.phases))
        self.decay = self.cfg.optim.ema_decay

    def steps(self, n: int) -> int:
        """n engine steps; -> real images drawn."""
        drawn = 0
        for _ in range(n):
            self.lctx.step += 1
            d, _ = loop.train_step(self.fam, self.phases, self.wrapped, self.opts, self.emas, self.nets,
                                   lambda: self.batch, self.lctx, loop.Stats(), lambda _: self.decay)
            drawn += d
        return drawn

    def flops_per_image(self) -> float:
        start = self.lctx.step
        with _FlopCount() as fc:
            drawn = self.steps(self.period)
        self.lctx.step = start
        return fc.total / drawn

    def describe(self) -> str:
        g = getattr(self.fam, "growth", None)
        px = g.stage.resolution if g is not None and g.stage else self.cfg.data.resolution
        return (f"{self.fam.name} {px} px B={self.fam.batch_size()} {loop.autocast(self.cfg, self.device) and 'bf16' or 'fp32'}"
                f" {'NHWC' if loop.channels_last(self.cfg, self.device) else 'NCHW'}")


def measure(arm: str, mode: str | None, device: torch.device, steps: int, warmup: int,
            flops: float | None = None, profile: bool = False) -> dict:
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    a = Arm(arm, mode, device)
    if flops is None:
        flops = a.flops_per_image()
    t0 = time.perf_counter()
    a.steps(max(warmup, a.period))           # compiles every graph the phases use
    _sync(device)
    warm_s = time.perf_counter() - t0
    steps = max(a.period, steps // a.period * a.period)     # whole periods: lazy phases in proportion
    t0 = time.perf_counter()
    drawn = a.steps(steps)
    _sync(device)
    dt = time.perf_counter() - t0
    row = {"arm": arm, "what": a.describe(), "compile": mode or "off", "steps": steps,
           "img_s": drawn / dt, "gflop_per_img": flops / 1e9, "tflop_s": flops * drawn / dt / 1e12,
           "warmup_s": warm_s,
           "peak_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None}
    if profile:
        row["profile"] = top_ops(a, device)
    del a
    return row


def top_ops(a: Arm, device: torch.device, k: int = 12) -> list[dict]:
    """Where a period of steps spends its time: the k ops with the most self time on the device."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        a.steps(a.period)
        _sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1
    return [{"op": e.key[:60], "ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total}
            for e in events[:k]]


def run(arms: list[str], modes: list[str | None], device: torch.device, steps: int, warmup: int,
        profile: bool = False, minutes_left=None, log=print) -> dict:
    """Every arm in every mode: every arm eager first, then the first arm in the other modes, then
    the others, so that when `minutes_left()` runs short the compiled extras are what is left out.
    On an H200 (16 cores, cold inductor cache) compiling BigGAN-128 took 3.4 minutes; an eager arm
    takes under half a minute."""
    peak = matmul_peak(device)
    log(f"  matmul peak ({'bf16 8192^3' if device.type == 'cuda' else 'fp32 1024^3'}): {peak:.3g} TFLOP/s")
    jobs = [(a, modes[0]) for a in arms] + [(a, m) for a in arms for m in modes[1:]]
    rows, skipped, flops = [], [], {}
    for arm, mode in jobs:
        need = (3.5 if mode else 0.5) if device.type == "cuda" else 0.0
        left = minutes_left() if minutes_left else float("inf")
        if left < need or (arm not in flops and mode != modes[0]):   # FLOPs come from the first mode
            skipped.append(f"{arm} compile {mode or 'off'}: {left:.1f} min left")
            log(f"  skipped {skipped[-1]}")
            continue
        r = measure(arm, mode, device, steps, warmup, flops.get(arm),
                    profile and arm == arms[0] and mode == modes[-1])
        flops[arm] = r["gflop_per_img"] * 1e9
        r["of_peak"] = r["tflop_s"] / peak
        rows.append(r)
        log(f"  {r['what']:<34} compile {r['compile']:<8} {r['img_s']:>9.1f} img/s "
            f"{r['tflop_s']:>8.3g} TFLOP/s ({r['of_peak']:.0%} of peak)  warm-up {r['warmup_s']:.0f} s"
            + (f"  peak {r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else ""))
        for p in r.get("profile", []):       # now, not only in the final table: a later arm may crash
            log(f"    profile: {p['share']:>6.1%} {p['ms']:>9.2f} ms  {p['op']}")
    return {"matmul_peak_tflop_s": peak, "rows": rows, "skipped": skipped}


def table(res: dict) -> str:
    lines = [f"{'model':<36}{'compile':<10}{'img/s':>9}{'GFLOP/img':>11}{'TFLOP/s':>9}{'of peak':>9}{'peak GiB':>10}"]
    for r in res["rows"]:
        mem = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        lines.append(f"{r['what']:<36}{r['compile']:<10}{r['img_s']:>9.1f}{r['gflop_per_img']:>11.1f}"
                     f"{r['tflop_s']:>9.3g}{r['of_peak']:>9.1%}{mem:>10}")
    for r in res["rows"]:
        for p in r.get("profile", []):
            lines.append(f"  profile {r['what']} ({r['compile']}): {p['share']:>6.1%} {p['ms']:>9.2f} ms  {p['op']}")
    return "\n".join(lines)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arms", nargs="*")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="32 px arms, a few steps (the CPU check)")
    ap.add_argument("--compile", help="comma-separated: off,default,max-autotune-no-cudagraphs "
                                      "(default: off,default on CUDA; off on CPU, where compiling costs minutes)")
    ap.add_argument("--steps", type=int, help="timed steps, rounded to whole phase periods (default 32; tiny 4)")
    ap.add_argument("--warmup", type=int, help="untimed steps before timing, at least one period (default 3; tiny 1)")
    ap.add_argument("--profile", action="store_true", help="where the first arm's last mode spends its time")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args(argv)
    a.device = torch.device(a.device)
    a.arms = a.arms or (TINY_ARMS if a.tiny else GPU_ARMS)
    a.steps = a.steps or (4 if a.tiny else 32)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.tiny else 3)
    a.modes = [None if m == "off" else m for m in
               (a.compile or ("off,default" if a.device.type == "cuda" else "off")).split(",")]
    return a


def main(argv=None) -> dict:
    a = parse(argv)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    print(f"device: {device_name(a.device)}, torch {torch.__version__}")
    res = run(a.arms, a.modes, a.device, a.steps, a.warmup, a.profile)
    res["device"] = device_name(a.device)
    print(table(res))
    print(REFERENCE)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
