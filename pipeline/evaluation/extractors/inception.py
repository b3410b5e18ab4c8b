"""The FID InceptionV3: TF's 2015-12-05 Inception graph as ported by pytorch-fid.

Same network as torchvision's Inception3 with 1008 classes and no aux head, except for the pool
branches, which follow the TF graph: average pools that ignore padding (count_include_pad=False)
and a max pool in the last block (Mixed_7c). torchvision's blocks are reused so the state-dict
keys match pt_inception-2015-12-05-6726825d.pth exactly. Inputs are resized to 299x299 with
bilinear interpolation (align_corners=False, no antialias), as pytorch-fid does; the 2048-d pool3
output is the FID feature and fc gives the 1008 logits used for the Inception Score.

Nothing downloads unless a URL is given explicitly.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import inception as tv

from pipeline.evaluation.extractors import Extractor

NAME = "inception-v3-tf-2015-12-05"
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"
RESIZE = "bilinear-299"


class InceptionWeightsMissing(FileNotFoundError):
    pass


def _tf_avg_pool(x):
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _BlockA(tv.InceptionA):
    def _forward(self, x):
        return [self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_tf_avg_pool(x))]


class _BlockC(tv.InceptionC):
    def _forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for m in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                  self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = m(d)
        return [self.branch1x1(x), b7, d, self.branch_pool(_tf_avg_pool(x))]


class _BlockE(tv.InceptionE):
    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__(in_channels)
        self.max_pool = max_pool

    def _forward(self, x):
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return [self.branch1x1(x),
                torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1),
                torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1),
                self.branch_pool(pool)]


class FIDInceptionV3(nn.Module):
    def __init__(self):
        super().__init__()
        net = tv.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
        net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = _BlockA(192, 32), _BlockA(256, 64), _BlockA(288, 64)
        net.Mixed_6b, net.Mixed_6c = _BlockC(768, 128), _BlockC(768, 160)
        net.Mixed_6d, net.Mixed_6e = _BlockC(768, 160), _BlockC(768, 192)
        net.Mixed_7b, net.Mixed_7c = _BlockE(1280, max_pool=False), _BlockE(2048, max_pool=True)
        self.net = net
        self.trunk = nn.Sequential(
            net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, net.maxpool1,
            net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, net.maxpool2,
            net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c,
            net.Mixed_6d, net.Mixed_6e, net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, net.avgpool)

    def forward(self, x):
        """x in [-1, 1] -> (pool3 features [N, 2048], logits [N, 1008])."""
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        f = self.trunk(x).flatten(1)
        return f, self.net.fc(f)


def cache_dirs() -> list[Path]:
    """Where weights are looked for: $GANFORGE_HOME/weights, then torch hub's checkpoint cache
    (where pytorch-fid itself saves them)."""
    from pipeline.config import ganforge_home
    return [ganforge_home() / "weights", Path(torch.hub.get_dir()) / "checkpoints"]


def resolve_weights(weights: str | None = None) -> Path:
    """weights: a file, a folder holding WEIGHTS_FILE, a URL (downloaded into the first cache
    folder, only when named here), or None to search the cache folders."""
    if weights and weights.startswith(("http://", "https://")):
        dest = cache_dirs()[0] / WEIGHTS_FILE
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights, str(dest))
        return dest
    if weights:
        p = Path(os.path.expanduser(weights))
        p = p / WEIGHTS_FILE if p.is_dir() else p
        if p.is_file():
            return p
        raise InceptionWeightsMissing(f"FID Inception weights not found at {p}. {_where()}")
    for d in cache_dirs():
        if (d / WEIGHTS_FILE).is_file():
            return d / WEIGHTS_FILE
    raise InceptionWeightsMissing(f"FID Inception weights not found. {_where()}")


def _where() -> str:
    dirs = cache_dirs()
    return (f"Put {WEIGHTS_FILE} at {dirs[0] / WEIGHTS_FILE} (or {dirs[1] / WEIGHTS_FILE}), "
            f"or pass its path. On a machine with network, fetch it from {WEIGHTS_URL}")


def load(weights: str | None = None, *, random_weights: bool = False) -> Extractor:
    """The FID InceptionV3 with pytorch-fid's weights; random_weights=True for benchmarks only."""
    net = FIDInceptionV3()
    if random_weights:
        return Extractor(net, name=f"{NAME}-RANDOM", sha256="random", resize=RESIZE, standard=False)
    from pipeline.engine.checkpoint import sha256_file

    path = resolve_weights(weights)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.net.load_state_dict(state)
    return Extractor(net, name=NAME, sha256=sha256_file(path), resize=RESIZE, standard=True)
