"""Shards: writing, reading, declared sample fields, decoding, built-in datasets with oracles.

Names resolve lazily (PEP 562) from fields, shards and stream, so importing the light parts
(pipeline.data.fields, which every family spec reads) does not import torchvision and
webdataset: the logged generator model loads with torch alone.
"""
from __future__ import annotations

import importlib

_MODULES = ("fields", "shards", "stream")


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    for mod in _MODULES:
        m = importlib.import_module(f"{__name__}.{mod}")
        if name in getattr(m, "__dict__", {}) and not isinstance(m.__dict__[name], type(importlib)):
            value = m.__dict__[name]
            globals()[name] = value        # cached: __getattr__ runs once per name
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
