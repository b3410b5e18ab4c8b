"""Search spaces for `ganforge tune`: a YAML file of dotted config keys -> Ray Tune domains.

    # a space file; presets live in jobs/configs/spaces/
    objective: d_gap            # optional: the metric to rank trials by (default: see jobs/tune.py)
    mode: min                   # optional: min | max (default min)
    params:
      loss.gp_weight: loguniform(0.1, 100)
      loss.kind: choice([hinge, wasserstein])
    asha: {grace_period: 100, reduction_factor: 2}          # optional, in G steps
    pbt: {perturbation_interval: 200, quantile_fraction: 0.25, resample_probability: 0.25, synch: false}

Domains: `loguniform(a, b)`, `uniform(a, b)`, `randint(a, b)` (a <= x < b, as in Tune),
`choice([...])`, `grid([...])`; any other value is a constant set in every trial. Each key is
checked against the run Config by building configs with the domain's end points and every
listed value, so a typo or an out-of-range bound fails before anything starts, naming the key.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline import config as C

SPACE_DIR = C.PRESET_DIR / "spaces"
_CALL = re.compile(r"^\s*(loguniform|uniform|randint|choice|grid)\s*\((.*)\)\s*$", re.S)
# Fixed for the whole study: every trial reads the same shards with the same resources, is
# judged by the same evaluation protocol, and the schedulers measure trials in train.steps.
_FIXED = ("data.", "scaling.", "tracking.", "eval.", "train.steps", "train.run_name",
          "train.storage_path", "preset")
_TOP = {"description", "objective", "mode", "params", "asha", "pbt"}
_ASHA = {"grace_period": int, "reduction_factor": (int, float)}
_PBT = {"perturbation_interval": int, "quantile_fraction": (int, float),
        "resample_probability": (int, float), "synch": bool}


@dataclass(frozen=True)
class Param:
    key: str                      # dotted config key, e.g. loss.gp_weight
    kind: str                     # loguniform | uniform | randint | choice | grid | const
    args: tuple                   # (a, b) for ranges, (values,) for choice/grid, (value,) for const
    spec: str                     # as written in the YAML, for MLflow params and the table

    @property
    def searched(self) -> bool:
        return self.kind != "const"

    @property
    def log_scale(self) -> bool:
        return self.kind == "loguniform"

    def domain(self):
        """The Ray Tune domain (or constant) for Tuner(param_space=...)."""
        from ray import tune

        if self.kind == "const":
            return self.args[0]
        if self.kind == "grid":
            return tune.grid_search(list(self.args[0]))
        if self.kind == "choice":
            return tune.choice(list(self.args[0]))
        return getattr(tune, self.kind)(*self.args)

    def probe_values(self) -> list:
        """Values that must all make a valid config: the range ends or every listed value."""
        if self.kind in ("choice", "grid"):
            return list(self.args[0])
        if self.kind == "randint":
            return [self.args[0], self.args[1] - 1]
        if self.kind == "const":
            return [self.args[0]]
        return list(self.args)


@dataclass(frozen=True)
class Space:
    name: str
    path: str
    params: dict[str, Param]
    objective: str | None = None   # None: the study decides (an eval score if evaluated, else d_gap)
    mode: str | None = None
    description: str = ""
    asha: dict = field(default_factory=dict)
    pbt: dict = field(default_factory=dict)

    @property
    def searched(self) -> dict[str, Param]:
        return {k: p for k, p in self.params.items() if p.searched}

    def param_space(self) -> dict[str, Any]:
        """Flat {dotted key: domain}; trial configs come back with the same flat keys."""
        return {k: p.domain() for k, p in self.params.items()}

    def mutations(self) -> dict[str, Any]:
        """PBT's hyperparam_mutations: what explore may resample or perturb. A choice is given
        as its list, which PBT explores by moving to a neighbouring value."""
        bad = [k for k, p in self.searched.items() if p.kind == "grid"]
        if bad:
            raise C.ConfigError(f"{bad[0]}: grid() cannot be explored by PBT; use choice() or a range")
        return {k: list(p.args[0]) if p.kind == "choice" else p.domain() for k, p in self.searched.items()}

    def clamp(self, config: dict) -> dict:
        """PBT's explore multiplies a range value by 0.8 or 1.2: keep it inside the declared
        range, so it stays a value the space (and the Config) accepts."""
        for k, p in self.searched.items():
            if k in config and p.kind in ("uniform", "loguniform", "randint"):
                lo, hi = (p.args[0], p.args[1] - 1) if p.kind == "randint" else p.args
                config[k] = min(max(config[k], lo), hi)
        return config


def resolve(name_or_path: str) -> Path:
    return C.find_yaml(name_or_path, SPACE_DIR, "space")


def parse_param(key: str, raw: Any) -> Param:
    m = _CALL.match(raw) if isinstance(raw, str) else None
    if not m:
        return Param(key, "const", (raw,), yaml.safe_dump(raw, default_flow_style=True).strip())
    kind, body = m.group(1), m.group(2)
    try:
        args = yaml.safe_load(f"[{body}]")
    except yaml.YAMLError:
        raise C.ConfigError(f"{key}: cannot read the arguments of {raw!r}") from None
    if kind in ("choice", "grid"):
        if len(args) != 1 or not isinstance(args[0], list) or not args[0]:
            raise C.ConfigError(f"{key}: {kind}() takes one non-empty list, e.g. {kind}([1, 2]); got {raw!r}")
        return Param(key, kind, (tuple(args[0]),), raw.strip())
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise C.ConfigError(f"{key}: {kind}() takes two numbers, e.g. {kind}(1, 10); got {raw!r}")
    a, b = args
    if not a < b:
        raise C.ConfigError(f"{key}: {kind}({a}, {b}) needs lower < upper")
    if kind == "loguniform" and a <= 0:
        raise C.ConfigError(f"{key}: loguniform needs a lower bound > 0, got {a}")
    if kind == "randint" and not (isinstance(a, int) and isinstance(b, int)):
        raise C.ConfigError(f"{key}: randint() takes integers, got {raw!r}")
    return Param(key, kind, (a, b), raw.strip())


def _sub(d: Any, where: str, schema: dict) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise C.ConfigError(f"{where}: expected a mapping, got {d!r}")
    for k, v in d.items():
        if k not in schema:
            raise C.ConfigError(f"{where}.{k}: unknown key (known: {', '.join(schema)})")
        if isinstance(v, bool) != (schema[k] is bool) or not isinstance(v, schema[k]):
            want = {int: "an integer", bool: "true/false"}.get(schema[k], "a number")
            raise C.ConfigError(f"{where}.{k}: expected {want}, got {v!r}")
    return dict(d)


def load(name_or_path: str) -> Space:
    p = resolve(name_or_path)
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise C.ConfigError(f"space {p}: not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise C.ConfigError(f"space {p}: top level must be a mapping")
    for k in d:
        if k not in _TOP:
            raise C.ConfigError(f"space {p.name}: {k}: unknown key (known: {', '.join(sorted(_TOP))})")
    params = d.get("params")
    if not isinstance(params, dict) or not params:
        raise C.ConfigError(f"space {p.name}: params: needs at least one `dotted.key: domain`")
    mode = d.get("mode")
    if mode not in (None, "min", "max"):
        raise C.ConfigError(f"space {p.name}: mode: must be min or max, got {mode!r}")
    parsed = {str(k): parse_param(str(k), v) for k, v in params.items()}
    if not any(q.searched for q in parsed.values()):
        raise C.ConfigError(f"space {p.name}: params: nothing to search (all values are constants)")
    return Space(name=p.stem, path=str(p.resolve()), params=parsed,
                 objective=d.get("objective"), mode=mode,
                 description=str(d.get("description") or ""),
                 asha=_sub(d.get("asha"), "asha", _ASHA), pbt=_sub(d.get("pbt"), "pbt", _PBT))


# ---------------------------------------------------------------- configs

def _set(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = d
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise C.ConfigError(f"{'.'.join(parts[:i + 1])}: is a value, cannot set {key}")
        node = nxt
    node[parts[-1]] = value


def apply(base: dict, values: dict[str, Any]) -> C.Config:
    """The Config for one trial: `base` (a to_dict() tree) with dotted `values` set."""
    d = copy.deepcopy(base)
    for k, v in values.items():
        _set(d, k, v)
    return C.from_dict(d)


def validate(space: Space, base: dict, overrides: list[str] = ()) -> None:
    """Raise ConfigError naming the first key that is unknown, fixed per study, set twice, or
    whose range ends / listed values the Config refuses."""
    given = {o.split("=", 1)[0].strip() for o in overrides}
    for key, p in space.params.items():
        fixed = next((f for f in _FIXED if key == f.rstrip(".") or key.startswith(f)), None)
        if fixed:
            raise C.ConfigError(f"{key}: cannot be searched ({fixed.rstrip('.')} is fixed for the whole "
                                "study: trials share shards, resources, tracking, the evaluation "
                                "protocol and the step budget)")
        if key in given:
            raise C.ConfigError(f"{key}: set by both the space and a key=value override; drop one")
        for v in p.probe_values():
            try:
                apply(base, {key: v})
            except C.ConfigError as e:
                msg = str(e)
                # Keep Config's own wording ("loss.gp_weight: must be >= 0"); say which value failed.
                raise C.ConfigError(f"{msg} (from space value {v!r} of {p.spec!r})"
                                    if msg.startswith(key) else f"{key}: {p.spec}: {msg}") from None
