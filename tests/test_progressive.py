"""ProGAN growth (pipeline.families.progan): stage, learning rate, Adam reset and batch changes on one rank, and DDP
re-wrapping across stage changes on two gloo processes (params stay in sync, old wrappers die)."""
from __future__ import annotations

import copy
import os
import queue
import socket
import time
import weakref

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

import models
from pipeline import families
from pipeline.families import progan as progressive
from phases import d_step, g_step
from pipeline.config import from_dict

MODEL = {"name": "progan", "resolution": 16, "z_dim": 8, "channel_max": 8,
         "phase_images": [8, 16, 16], "phase_batch": [4, 4, 2], "phase_lr": [1e-3, 2e-3, 3e-3]}


def _cfg():
    return from_dict({"model": MODEL, "data": {"resolution": 16}, "train": {"batch_size": 4},
                      "loss": {"kind": "wasserstein", "gp_weight": 10.0, "drift_weight": 1e-3}})


def _setup(cfg):
    n = models.build(cfg.model)
    G, D = n["G"], n["D"]
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opts = (torch.optim.Adam(G.parameters(), 1e-4), torch.optim.Adam(D.parameters(), 1e-4))
    return G, D, G_ema, opts


def test_growth_sets_stage_lr_and_resets_adam_on_layer_changes():
    cfg = _cfg()
    G, D, G_ema, (opt_g, opt_d) = _setup(cfg)
    grow = progressive.Growth(cfg, (G, D, G_ema), (opt_g, opt_d))
    assert grow.advance(0) == (True, False)              # built at 16 px: 4x4 trains other layers
    assert G.current_resolution == D.current_resolution == G_ema.current_resolution == 4
    assert opt_g.param_groups[0]["lr"] == opt_d.param_groups[0]["lr"] == 1e-3
    assert grow.metrics() == {"level": 0, "alpha": 1.0, "resolution": 4} and grow.batch_size == 4
    opt_g.state[G.rgb[0].weight]["step"] = torch.tensor(1.0)   # stands in for Adam moments
    assert grow.advance(4) == (False, False) and len(opt_g.state) == 1
    assert grow.advance(8) == (True, False) and len(opt_g.state) == 0   # the 8 px fade-in starts
    assert grow.metrics()["alpha"] == 0.0 and opt_d.param_groups[0]["lr"] == 2e-3
    assert grow.advance(12) == (False, False) and float(G_ema.alpha) == 0.5
    assert grow.advance(16) == (True, False)                         # fade-in over
    assert grow.advance(24) == (True, True) and grow.batch_size == 2 # 16 px, batch 2
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert grow.reals(x).shape[-1] == 16 and not torch.equal(grow.reals(x), x)   # alpha 0: blurred
    assert isinstance(families.of(cfg), progressive.ProGAN) and not isinstance(families.of(from_dict(
        {"model": {"name": "dcgan", "resolution": 16}, "data": {"resolution": 16}})), progressive.ProGAN)


def _worker(rank: int, world: int, port: int, q) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)                                  # same init on both ranks
    cfg = _cfg()
    G, D, G_ema, opts = _setup(cfg)
    grow = progressive.Growth(cfg, (G, D, G_ema), opts)
    grow.advance(0)
    wrap = lambda m: DDP(m, forward_sync_buffers=False)     # noqa: E731  the loop's prepare_model
    Gw, Dw = wrap(G), wrap(D)
    fam = families.of(cfg)
    torch.manual_seed(1 + rank)                           # different data and noise per rank
    seen, dead, rewraps = 0, [], 0
    while seen < 40:
        rewrap, _ = grow.advance(seen)
        if rewrap:
            dead += [weakref.ref(Gw), weakref.ref(Dw)]
            Gw, Dw = wrap(G), wrap(D)
            rewraps += 1
        b = grow.batch_size
        real = grow.reals(torch.rand(b, 3, 16, 16) * 2 - 1)
        d_step(fam, {"G": Gw, "D": Dw}, opts[1], real)
        g_step(fam, {"G": Gw, "D": Dw}, opts[0], b)
        seen += b * world
    flat = torch.cat([p.detach().flatten() for p in [*G.parameters(), *D.parameters()]])
    everyone = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(everyone, flat)
    q.put((rank, rewraps, sum(r() is not None for r in dead),
           bool(torch.equal(everyone[0], everyone[1])), float((flat - everyone[0]).abs().max())))
    dist.barrier()                                        # no rank tears gloo down under the other
    dist.destroy_process_group()


@pytest.mark.slow
def test_rewrapped_ddp_keeps_ranks_in_sync():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    pc = mp.start_processes(_worker, args=(2, port, q), nprocs=2, join=False, start_method="spawn")
    # Results are read from the queue, not from the exit codes: once a rank has reported, what is
    # under test (re-wraps that keep ranks in sync and do not hang) is done. One CI run (e6ec18c,
    # the full suite's load) saw a rank abort with "terminate called without an active exception",
    # which is what gloo does when torn down mid-connection; the barrier before destroy and this
    # read make a teardown abort harmless, while an abort before reporting still fails here.
    deadline = time.monotonic() + 120                      # a stale reducer hook would hang here
    results = []
    while len(results) < 2:
        try:
            results.append(q.get(timeout=1))
        except queue.Empty:
            dead = [p.exitcode for p in pc.processes if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                for p in pc.processes:
                    p.kill()
                pytest.fail(f"a rank exited with {dead} before both reported" if dead else "DDP ranks hung across a re-wrap")
    for p in pc.processes:
        p.join(30)
    hung = [p for p in pc.processes if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, "a rank hung in teardown after reporting"
    results.sort()
    for rank, rewraps, alive, same, diff in results:
        assert rewraps == 4                               # 8 px fade in, stable, 16 px fade in, stable
        assert alive == 0                                 # old wrappers (and their hooks) are gone
        assert same, f"rank {rank} parameters drifted by {diff}"
