"""Metric registry: each metric is a function of gathered samples, registered by name.

A metric declares what it needs: per-sample arrays of the generated set ("features", "logits",
"labels", "glyphs"; its feature mean/covariance always comes along) and of the real set
("real_stats": mean/cov, "real_features": features and labels). Collection keeps only what the
requested metrics need, every rank computes its share, rank 0 combines the shares and calls
`compute`. Results are plain floats keyed by name; `metric_keys` names them for MLflow.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

_MODULES = ("fid", "inception_score", "kid", "precision_recall", "coverage")
# Needs that depend on the feature extractor: such metrics carry its name in their MLflow key.
_EXTRACTOR_NEEDS = {"features", "logits", "real_stats", "real_features"}


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[..., dict[str, float]]
    needs: frozenset[str]

    @property
    def uses_extractor(self) -> bool:
        return bool(self.needs & _EXTRACTOR_NEEDS)


_METRICS: dict[str, Metric] = {}


def register(name: str, needs: tuple[str, ...] = ()):
    """Decorator: @register("fid", needs=("real_stats",)) on fn(fake, ref, **opts) -> {key: value}."""
    def deco(fn):
        if name in _METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        _METRICS[name] = Metric(name, fn, frozenset(needs))
        return fn
    return deco


def _load_all() -> None:
    for m in _MODULES:
        importlib.import_module(f"{__name__}.{m}")


def list_metrics() -> list[str]:
    _load_all()
    return sorted(_METRICS)


def get(name: str) -> Metric:
    _load_all()
    if name not in _METRICS:
        raise KeyError(f"unknown metric {name!r} (known: {', '.join(sorted(_METRICS))})")
    return _METRICS[name]


def needs(names) -> set[str]:
    """Union of what the named metrics need."""
    return set().union(*(get(n).needs for n in names))


def fake_keep(names) -> set[str]:
    """Per-sample arrays of the generated set that the named metrics need kept."""
    return needs(names) & {"features", "logits", "labels", "glyphs"}


def real_keep(names) -> set[str]:
    """Per-sample arrays of the real set that the named metrics need kept."""
    return {"features", "labels"} if "real_features" in needs(names) else set()


def compute(name: str, fake, ref=None, **opts) -> dict[str, float]:
    """Run one metric on the combined generated Partial and the reference statistics.

    opts (all optional): kid_subsets, kid_subset_size, pr_k, is_splits, seed.
    """
    m = get(name)
    if m.needs & {"real_stats", "real_features"} and ref is None:
        raise ValueError(f"metric {name!r} needs reference statistics of the real data")
    if "real_features" in m.needs and ref.features is None:
        raise ValueError(f"metric {name!r} needs real features; the reference was saved without them")
    missing = [k for k in m.needs & {"features", "logits", "glyphs"} if getattr(fake, k) is None]
    if missing:
        raise ValueError(f"metric {name!r} needs {', '.join(missing)} of the generated samples; "
                         f"collect with needs={sorted(m.needs)}")
    return {k: float(v) for k, v in m.fn(fake, ref, **opts).items()}


def compute_all(names, fake, ref=None, **opts) -> dict[str, dict[str, float]]:
    """{metric name: its results}; see compute()."""
    return {n: compute(n, fake, ref, **opts) for n in names}


def metric_keys(results: dict[str, dict[str, float]], extractor: str, standard: bool,
                prefix: str = "eval") -> dict[str, float]:
    """Flat MLflow metric names. Scores from a non-standard extractor get its name in the key
    ("eval/ganforge-small-shapestack/fid"), so they can never be read as standard FIDs."""
    out = {}
    for name, values in results.items():
        scope = prefix if standard or not get(name).uses_extractor else f"{prefix}/{extractor}"
        out.update({f"{scope}/{k}": v for k, v in values.items()})
    return out
