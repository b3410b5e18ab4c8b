"""GAN families: one spec per family (networks, optimizers, phases, sample fields, generation
inputs). A registry is a dict plus a decorator; tests loop over it.

No ray, mlflow or torch.distributed here: the local engine and the GPU benchmark import this
package on a machine that has only torch.
"""
from __future__ import annotations

import importlib

from pipeline.families.spec import Family

_REGISTRY: dict[str, type[Family]] = {}
# One line per family module; importing it registers its names.
_MODULES = (
    "pipeline.families.gan",
    "pipeline.families.progan",
    "pipeline.families.acgan",
    "pipeline.families.infogan",
    "pipeline.families.stylegan2",
    "pipeline.families.pix2pix",
    "pipeline.families.cyclegan",
    "pipeline.families.stargan",
    "pipeline.families.encoders",
    "pipeline.families.lapgan",
    "pipeline.families.stackgan",
    "pipeline.families.textgan",
)


def register(name: str, config_cls: type):
    """Class decorator: @register("dcgan", DCGANConfig) on a Family subclass."""
    def deco(cls: type[Family]) -> type[Family]:
        if name in _REGISTRY:
            raise ValueError(f"family {name!r} registered twice")
        cls = type(cls.__name__, (cls,), {"name": name, "Config": config_cls,
                                           "__module__": cls.__module__, "__doc__": cls.__doc__})
        _REGISTRY[name] = cls
        return cls
    return deco


def _load_all() -> None:
    for m in _MODULES:
        importlib.import_module(m)


def names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get(name: str) -> type[Family]:
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown family {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def config_class(name: str) -> type:
    return get(name).Config


def name_of(model_cfg: object) -> str:
    """The registered family whose config class built `model_cfg`."""
    _load_all()
    for n, cls in _REGISTRY.items():
        if type(model_cfg) is cls.Config:
            return n
    raise KeyError(f"{type(model_cfg).__name__} is not a registered family config")


def of(cfg) -> Family:
    """The family spec bound to a whole run config."""
    return get(name_of(cfg.model))(cfg)
