"""Model registry: single-device networks, each family built from its own dataclass config.

A family's `build(cfg)` returns a `Nets`: a dict of named modules. Direct GANs have "G" and "D";
families that need more add names (CycleGAN: G_ab, G_ba, D_a, D_b; BiGAN/VAE-GAN: E), so the
training loop never assumes a fixed pair. No ray, mlflow or torch.distributed imports here: the
GPU benchmark imports this package on a machine that has only torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

Nets = dict[str, nn.Module]


@dataclass(frozen=True)
class Family:
    name: str
    config_cls: type
    build: Callable[[object], Nets]


_REGISTRY: dict[str, Family] = {}
# Families live in their own modules; import them lazily so `import models` stays cheap.
_MODULES = ("models.dcgan", "models.biggan", "models.biggan_deep", "models.progan")


def register(name: str, config_cls: type):
    """Decorator for a family's build function: @register("dcgan", DCGANConfig)."""
    def deco(fn: Callable[[object], Nets]):
        if name in _REGISTRY:
            raise ValueError(f"model family {name!r} registered twice")
        _REGISTRY[name] = Family(name, config_cls, fn)
        fn.family_name = name
        return fn
    return deco


def _load_all() -> None:
    for m in _MODULES:
        importlib.import_module(m)


def list_models() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def config_class(name: str) -> type:
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name].config_cls


def family_of(cfg: object) -> str:
    """The registered name whose config class built `cfg`."""
    _load_all()
    for fam in _REGISTRY.values():
        if type(cfg) is fam.config_cls:
            return fam.name
    raise KeyError(f"{type(cfg).__name__} is not a registered model config")


def build(cfg: object) -> Nets:
    return _REGISTRY[family_of(cfg)].build(cfg)
