"""BigGAN training throughput (images/s) and achieved TFLOP/s.

One iteration: a D step on B real + B fake (one D forward on the concatenated 2B, hinge), a G step
on B fake (hinge + orthogonal regularization; D's weights frozen so only input gradients flow),
an EMA update of G; Adam, fused on CUDA. Reals and labels are synthetic and made once on the
device, so this measures the networks and optimizers, not data loading. img/s counts B per
iteration. FLOPs are counted by torch.utils.flop_counter on one eager iteration (forward and
backward; optimizer arithmetic is not counted). No host sync inside the timed loop.

Imports only torch, the stdlib, models.* and pipeline.engine.regularizers (torch alone): it runs on a
bare GPU machine with Python 3.12 + torch.

  python bench/gan_throughput.py                     # CUDA: BigGAN 128 px ch=96 B=256, bf16, compiled
  python bench/gan_throughput.py --device cpu        # tiny: 32 px ch=16 B=8, fp32, eager
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch                                             # noqa: E402
import torch.nn.functional as F                          # noqa: E402
from torch.utils.flop_counter import FlopCounterMode    # noqa: E402

import models                                            # noqa: E402
from pipeline.engine.regularizers import orthogonal             # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="biggan", choices=["biggan", "biggan_deep"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--resolution", type=int, help="px (default 128 on CUDA, 32 on CPU)")
    p.add_argument("--ch", type=int, help="width unit (default: the config's, 96 at 128 px)")
    p.add_argument("--batch", type=int, help="B (default 256 on CUDA, 8 on CPU)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--attn", type=int, help="attention px (default: the config's; 0 = none)")
    p.add_argument("--steps", type=int, help="timed iterations (default 20 on CUDA, 3 on CPU)")
    p.add_argument("--warmup", type=int, help="untimed iterations (default 5 on CUDA, 1 on CPU)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="default: on CUDA")
    p.add_argument("--compile-mode", default="default",
                   choices=["default", "max-autotune-no-cudagraphs", "max-autotune"])
    p.add_argument("--dtype", choices=["bf16", "fp32"], help="autocast dtype (default bf16 on CUDA)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help="default: on CUDA")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                   help="TF32 for fp32 matmuls (the orthogonal regularizer's, and fp32 runs)")
    p.add_argument("--ortho-weight", type=float, default=1e-4)
    p.add_argument("--ema-decay", type=float, default=0.9999)
    a = p.parse_args(argv)
    cuda = a.device.startswith("cuda")
    for k, on_gpu, on_cpu in [("resolution", 128, 32), ("batch", 256, 8), ("steps", 20, 3),
                              ("warmup", 5, 1), ("compile", True, False), ("dtype", "bf16", "fp32"),
                              ("channels_last", True, False)]:
        if getattr(a, k) is None:
            setattr(a, k, on_gpu if cuda else on_cpu)
    return a


class Trainer:
    """Networks, optimizers, synthetic data; `iteration(G, D)` takes the eager or compiled nets."""

    def __init__(self, a: argparse.Namespace):
        self.a, self.dev = a, torch.device(a.device)
        kw = {"resolution": a.resolution, "num_classes": a.num_classes, "ch": a.ch}
        if a.attn is not None:
            kw["attn_resolution"] = a.attn
        self.cfg = models.config_class(a.model)(**kw)
        nets = models.build(self.cfg)
        fmt = torch.channels_last if a.channels_last else torch.contiguous_format
        self.G = nets["G"].to(self.dev, memory_format=fmt)
        self.D = nets["D"].to(self.dev, memory_format=fmt)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        fused = {"fused": True} if self.dev.type == "cuda" else {}
        # BigGAN-PyTorch's 128 px settings: lr 1e-4 / 4e-4, betas (0, 0.999), eps 1e-6.
        self.opt_g = torch.optim.Adam(self.G.parameters(), 1e-4, betas=(0.0, 0.999), eps=1e-6, **fused)
        self.opt_d = torch.optim.Adam(self.D.parameters(), 4e-4, betas=(0.0, 0.999), eps=1e-6, **fused)
        self.amp = torch.autocast(self.dev.type, torch.bfloat16, enabled=a.dtype == "bf16")
        B, R = a.batch, a.resolution
        self.real = (torch.rand(B, 3, R, R, device=self.dev) * 2 - 1).contiguous(memory_format=fmt)
        self.y_real = self._labels()
        self.ema = (list(self.G_ema.parameters()), list(self.G.parameters()),
                    list(self.G_ema.buffers()), list(self.G.buffers()))
        self.Gc, self.Dc = self.G, self.D
        if a.compile:
            # Static shapes: D sees 2B images in the D step and B in the G step; without this the
            # second shape would recompile D with a symbolic batch size.
            self.Gc = torch.compile(self.G, mode=a.compile_mode, dynamic=False)
            self.Dc = torch.compile(self.D, mode=a.compile_mode, dynamic=False)

    def _labels(self):
        n = self.a.num_classes
        return torch.randint(0, n, (self.a.batch,), device=self.dev) if n else None

    def _z(self):
        return torch.randn(self.a.batch, self.G.z_dim, device=self.dev)

    def iteration(self, G, D) -> tuple[torch.Tensor, torch.Tensor]:
        B = self.a.batch
        # D step: G runs without a graph; one D forward on [real; fake] (BigGAN's D has no BN).
        y_fake = self._labels()
        with torch.no_grad(), self.amp:
            fake = G(self._z(), y_fake)
        y = torch.cat([self.y_real, y_fake]) if y_fake is not None else None
        with self.amp:
            logits = D(torch.cat([self.real, fake]), y).float()
        loss_d = F.relu(1 - logits[:B]).mean() + F.relu(1 + logits[B:]).mean()
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        # G step: D frozen, so its backward computes input gradients only.
        self.D.requires_grad_(False)
        y_fake = self._labels()
        with self.amp:
            loss_g = -D(G(self._z(), y_fake), y_fake).float().mean()
        if self.a.ortho_weight:
            loss_g = loss_g + self.a.ortho_weight * orthogonal(self.G)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.D.requires_grad_(True)
        # EMA of G; buffers (BN statistics, SN vectors) are copied.
        e_p, g_p, e_b, g_b = self.ema
        with torch.no_grad():
            torch._foreach_lerp_(e_p, g_p, 1.0 - self.a.ema_decay)
            torch._foreach_copy_(e_b, g_b)
        return loss_d.detach(), loss_g.detach()


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def main(argv=None) -> dict:
    a = parse(argv)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = a.tf32      # cuDNN convs use TF32 by default already
    t = Trainer(a)
    dev, B = t.dev, a.batch
    cpu = f"CPU ({torch.get_num_threads()} threads)"
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu
    n_sn = sum(1 for m in t.G.modules() if hasattr(m, "parametrizations")) + \
        sum(1 for m in t.D.modules() if hasattr(m, "parametrizations"))
    print(f"device {name} | torch {torch.__version__} | {a.model} {a.resolution} px "
          f"ch={t.cfg.g_width} attn={t.cfg.attn} classes={a.num_classes} B={B} | {a.dtype} "
          f"compile={a.compile}({a.compile_mode}) channels_last={a.channels_last} | "
          f"params G {sum(p.numel() for p in t.G.parameters()) / 1e6:.1f}M "
          f"D {sum(p.numel() for p in t.D.parameters()) / 1e6:.1f}M | SN layers {n_sn}", flush=True)

    with FlopCounterMode(display=False) as fc:          # eager, so every op is seen
        t.iteration(t.G, t.D)
    flops = fc.get_total_flops()
    for _ in range(a.warmup):
        t.iteration(t.Gc, t.Dc)
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss_d, loss_g = t.iteration(t.Gc, t.Dc)
    sync(dev)
    dt = time.perf_counter() - t0
    it_s = a.steps / dt
    res = {"img_s": B * it_s, "it_s": it_s, "gflop_per_img": flops / B / 1e9,
           "tflop_s": flops * it_s / 1e12,
           "peak_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
           "loss_d": float(loss_d), "loss_g": float(loss_g)}
    peak = f"{res['peak_gib']:.1f} GiB" if res["peak_gib"] is not None else "n/a"
    print(f"{res['img_s']:.1f} img/s ({it_s:.2f} it/s over {a.steps} iterations, {a.warmup} warm-up) | "
          f"{res['gflop_per_img']:.1f} GFLOP/img -> {res['tflop_s']:.2f} TFLOP/s | peak {peak} | "
          f"last loss_d {res['loss_d']:.3f} loss_g {res['loss_g']:.3f}", flush=True)
    return res


if __name__ == "__main__":
    main()
