"""Decoded images per CPU-second, as [-1, 1] float batches, from the same shards eight ways.

    python bench/data_throughput.py [--content natural|shapestack] [--seconds 6] [--rounds 6]

ours (RankStream in-process, and with 2 loader workers) from local files and from the same
shards over loopback HTTP (an http.server thread of this process, whose CPU the figure counts:
pipeline/data/netio.py's resuming reader), a stock webdataset .decode("pil") pipeline, and bare
loops (PIL; torchvision.io per image and per batch) over the shards' image bytes held in memory.
Every method ends in the same [-1, 1] float32 batch of 64.
"""
from __future__ import annotations

import argparse
import functools
import io
import os
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image
from torchvision.io import decode_jpeg, decode_png
from torchvision.transforms.functional import pil_to_tensor, to_tensor

from pipeline.data import RankStream, read_samples, resolve_shards, to_float, write_shards
from pipeline.data.datasets import shapestack

BATCH = 64


def natural(n: int, resolution: int, seed: int = 0):
    """Smooth random colour fields plus fine texture: JPEG/PNG costs closer to photos than glyphs."""
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        img = sum(F.interpolate(torch.rand(1, 3, s, s, generator=g), size=resolution, mode="bicubic",
                                align_corners=False) * w for s, w in ((4, 0.6), (16, 0.3), (resolution, 0.1)))
        yield f"{i:08d}", (img[0].clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy(), i % 10


def cpu_seconds(children: bool) -> float:
    """CPU time of this process and, if asked, of its live children (DataLoader workers)."""
    total = time.process_time()
    pid = os.getpid()
    for task in os.listdir(f"/proc/{pid}/task") if children else []:
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids = f.read().split()
        for kid in kids:
            with open(f"/proc/{kid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return total


def rate(it, seconds: float, children: bool) -> float:
    """Images per CPU-second for about `seconds` of wall time. CPU time, not wall time: other
    load on a shared machine then barely moves the figures."""
    n, t0, c0 = 0, time.perf_counter(), cpu_seconds(children)
    while time.perf_counter() - t0 < seconds:
        n += len(next(it))
    return n / (cpu_seconds(children) - c0)


def best_rates(methods: dict, seconds: float, rounds: int) -> dict:
    """Interleave short timed slices of every method and keep each one's best, so a burst of
    other load hurts one slice rather than one method."""
    for it, _ in methods.values():
        next(it)  # warm-up: worker start, first shard open
    best = dict.fromkeys(methods, 0.0)
    for _ in range(rounds):
        for name, (it, children) in methods.items():
            best[name] = max(best[name], rate(it, seconds / rounds, children))
    return best


def ours(urls, resolution, workers):
    with RankStream(urls, rank=0, world_size=1, batch_size=BATCH, resolution=resolution,
                    loader_workers=workers, seed=0) as stream:
        for batch in stream:
            yield to_float(batch.images)


def stock(urls):
    ds = (wds.WebDataset(urls, shardshuffle=False, empty_check=False).repeat().decode("pil")
          .to_tuple("jpg;png", "cls").map_tuple(lambda im: to_tensor(im) * 2 - 1, int).batched(BATCH))
    for images, _ in ds:
        yield images


def bare(blobs, decode_one=None, decode_list=None):
    while True:
        for i in range(0, len(blobs) - BATCH + 1, BATCH):
            chunk = blobs[i:i + BATCH]
            if decode_list:
                yield to_float(torch.stack(decode_list([torch.frombuffer(bytearray(b), dtype=torch.uint8)
                                                        for b in chunk])))
            else:
                yield to_float(torch.stack([decode_one(b) for b in chunk]))


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(folder: str) -> tuple[ThreadingHTTPServer, str]:
    """The folder over loopback HTTP, from a thread of this process -> (server, base URL)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=folder))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def pil_decode(b: bytes) -> torch.Tensor:
    return pil_to_tensor(Image.open(io.BytesIO(b)).convert("RGB"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--content", choices=["natural", "shapestack"], default="natural")
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per method and size")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved slices per method")
    ap.add_argument("--samples", type=int, default=2048)
    args = ap.parse_args()
    torch.set_num_threads(1)  # per-core figures
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server, base = serve(tmp)
        for resolution in (64, 128):
            for fmt in ("jpg", "png"):
                out = f"{tmp}/{fmt}{resolution}"
                gen = (natural(args.samples, resolution) if args.content == "natural"
                       else shapestack.samples(args.samples, resolution, 0))
                write_shards(gen, out, resolution=resolution, classes=[str(i) for i in range(10)],
                             source="bench", fmt=fmt, shard_size=256)
                urls, _ = resolve_shards(out)
                http_urls = [u.replace(tmp, base, 1) for u in urls]
                blobs = [m[fmt] for u in urls for _, m in read_samples(u)]
                kb = sum(map(len, blobs)) / len(blobs) / 1024
                tv = decode_jpeg if fmt == "jpg" else decode_png
                tv_one = lambda b: tv(torch.frombuffer(bytearray(b), dtype=torch.uint8))  # noqa: E731
                # decode_jpeg also takes a list (one Python wrapper call per batch); decode_png doesn't.
                tv_list = decode_jpeg if fmt == "jpg" else lambda bufs: [tv(b) for b in bufs]  # noqa: E731
                methods = {  # name: (batches of [-1, 1] floats, count children's CPU?)
                    "ours, in-process": (ours(urls, resolution, 0), False),
                    "ours, 2 loader workers": (ours(urls, resolution, 2), True),
                    "ours, in-process, http": (ours(http_urls, resolution, 0), False),
                    "ours, 2 workers, http": (ours(http_urls, resolution, 2), True),
                    "stock wds .decode('pil')": (stock(urls), False),
                    "bare PIL open+convert": (bare(blobs, pil_decode), False),
                    "bare torchvision.io": (bare(blobs, tv_one), False),
                    "bare torchvision.io, list": (bare(blobs, decode_list=tv_list), False),
                }
                res = best_rates(methods, args.seconds, args.rounds)
                for it, _ in methods.values():
                    it.close()
                rows.append((resolution, fmt, kb, res))
                print(f"{resolution} px {fmt} done", flush=True)
        server.shutdown()
        server.server_close()
    print(f"\n{args.content} content, batch {BATCH}, torch threads 1: images per CPU-second, i.e. per "
          "core (the 2-worker row counts its workers' CPU too)")
    print(f"{'':30}" + "".join(f"{f'{r} px {f} ({kb:.1f} KB)':>22}" for r, f, kb, _ in rows))
    for name in rows[0][3]:
        print(f"{name:30}" + "".join(f"{res[name]:>22,.0f}" for *_, res in rows))
    for ref in ("bare torchvision.io", "bare torchvision.io, list"):
        print(f"{'ours / ' + ref.removeprefix('bare '):30}" + "".join(
            f"{res['ours, in-process'] / res[ref]:>22.2f}" for *_, res in rows))
    print(f"{'http / local, in-process':30}" + "".join(
        f"{res['ours, in-process, http'] / res['ours, in-process']:>22.2f}" for *_, res in rows))


if __name__ == "__main__":
    main()
