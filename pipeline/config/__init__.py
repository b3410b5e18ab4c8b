"""Typed run configuration: YAML preset + dotted `key=value` overrides -> a frozen Config.

Config flows one way: the driver loads and validates it, then hands `to_dict(cfg)` to every
worker, which rebuilds it with `from_dict`. Nothing writes back into it.

Validation is pydantic's strict mode, run on the config dataclasses through `TypeAdapter`: strict
types (no silent "3" -> 3 coercion from YAML, ints still taken for floats and lists for tuples)
and every error a ConfigError that starts with the dotted key. The dataclasses stay plain stdlib
ones, not pydantic models: the model configs live next to their networks in models/, which must
import with torch alone (the GPU benchmark path has no pydantic); pipeline.config alone knows
pydantic.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml

from pipeline.evaluation.metrics.protocol import EvalConfig


class ConfigError(ValueError):
    """A config problem; the message always names the offending dotted key."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


# The built-in datasets, the keys of pipeline.data.datasets.BUILTIN (a test checks they agree); the
# `ganforge shards --builtin` choice reads them from here too.
BuiltinName = Literal["shapestack", "digits", "animals", "shapepairs", "shapeunpaired", "shapestyles", "shapecaptions"]
BUILTIN_NAMES: tuple[str, ...] = typing.get_args(BuiltinName)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    # Shards to read: a manifest.json, a folder holding one, or a brace pattern / URL list
    # (local paths, file://, http(s)://, s3://, gs://, pipe:). None means the built-in dataset below, whose
    # shards are written under $GANFORGE_HOME/data on first use.
    shards: str | None = None
    builtin: BuiltinName = "shapestack"
    builtin_samples: int = 4096          # images written when the built-in dataset is built
    builtin_shard_size: int = 512         # samples per shard for the built-in dataset
    resolution: int = 32                  # px; images are resized/cropped to this square size
    loader_workers: int = 2               # DataLoader worker processes per rank (0 = in-process)
    shuffle_buffer: int = 256             # in-worker sample shuffle buffer (0 = no shuffle)
    # What a bad sample gets: convert what can be converted (grey/RGBA -> RGB) and skip the rest,
    # skip everything that is not clean RGB, or raise naming shard and key.
    bad_samples: Literal["convert", "skip", "strict"] = "convert"
    # Remote shards (http(s)://, s3://, gs://) are read within a budget. A stall (no byte for
    # stall_timeout_s), a cut connection, a 5xx/408/429 answer is retried up to `retries` times
    # per shard, after retry_backoff_s, then 2x, 4x ... that, each retry resuming at the byte where
    # the read stopped. A shard still failing then is skipped for the rest of its pass (metric
    # skipped_shards, a warning naming it), or under bad_samples=strict ends the run. A 404 fails
    # at once. Local paths and pipe: ignore these.
    connect_timeout_s: float = 10.0       # s to open a connection (TCP + TLS); > 0
    stall_timeout_s: float = 60.0         # s without a byte on an open connection; > 0
    retries: int = 3                      # retries per shard; 0 = fail (or skip) at the first fault
    retry_backoff_s: float = 1.0          # s before the first retry, doubled for each next; >= 0

    def __post_init__(self):
        _check(16 <= self.resolution <= 1024, "data.resolution", f"{self.resolution} not in [16, 1024]")
        _check(self.loader_workers >= 0, "data.loader_workers", "must be >= 0")
        _check(self.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0")
        _check(self.builtin_samples > 0, "data.builtin_samples", "must be > 0")
        _check(self.builtin_shard_size > 0, "data.builtin_shard_size", "must be > 0")
        _check(self.connect_timeout_s > 0, "data.connect_timeout_s", "must be > 0")
        _check(self.stall_timeout_s > 0, "data.stall_timeout_s", "must be > 0")
        _check(self.retries >= 0, "data.retries", "must be >= 0")
        _check(self.retry_backoff_s >= 0, "data.retry_backoff_s", "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class LossConfig:
    # least_squares = LSGAN (Mao et al. 2017): D regresses reals to 1 and fakes to 0, G pulls
    # fakes to 1 (the 0-1-1 coding), each term halved as in the paper.
    kind: Literal["minimax", "nonsaturating", "hinge", "wasserstein", "least_squares"] = "nonsaturating"
    gp_weight: float = 0.0        # WGAN-GP gradient penalty weight (lambda); 0 disables
    r1_gamma: float = 0.0         # R1 zero-centred penalty on real data (gamma); 0 disables
    # Lazy R1 (StyleGAN2): a separate "Dreg" phase every N steps on the last real batch, its
    # weight times N and D's lr/betas corrected by N / (N + 1); 1 = in every D step.
    r1_every: int = 1
    drift_weight: float = 0.0     # ProGAN drift term eps * E[D(x)^2]; 0 disables
    ortho_weight: float = 0.0     # BigGAN orthogonal regularization of G (beta); 0 disables
    # MSGAN's mode-seeking term (Mao et al. 2019) in G's loss: pairs of samples with the same
    # condition and different z are pushed apart (a coverage option, for G(z, y) families that
    # run DirectGAN's G phase); 0 disables. MSGAN uses 1.
    mode_seeking_weight: float = 0.0

    def __post_init__(self):
        for k in ("gp_weight", "r1_gamma", "drift_weight", "ortho_weight", "mode_seeking_weight"):
            _check(getattr(self, k) >= 0, f"loss.{k}", "must be >= 0")
        _check(self.r1_every >= 1, "loss.r1_every", "must be >= 1")


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    # Adam learning rates of G's and D's phases. A d_lr above g_lr is the two time-scale update
    # rule (TTUR, Heusel et al. 2017; SAGAN uses 4e-4 / 1e-4), one of the coverage options.
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    d_steps_per_g: int = 1        # discriminator updates per generator update
    ema_decay: float = 0.999      # EMA of G weights per G step; 0 disables averaging
    ema_start: int = 0            # G steps before the EMA starts tracking (copies G until then)
    # StyleGAN2-ADA's ramp-up: the EMA's half-life, in images, is at most this fraction of the
    # images seen so far (so early on the average follows G), and at most ema_decay's. None: off.
    ema_rampup: float | None = None
    # BigGAN's standing statistics: before an EMA generator is checkpointed, evaluated or drawn
    # in a grid, its BatchNorm statistics are recomputed from this many of its own samples
    # (otherwise they are the live G's, which has other weights). 0: off. About one G forward
    # of that many samples per checkpoint, grid or evaluation. Refused for translation families
    # (no samples of their own).
    ema_bn_samples: int = 0
    # Linear lr decay, as pix2pix and CycleGAN train (their second half of epochs): every phase's
    # lr holds until G step lr_decay_from, then falls linearly to 0 at train.steps. It scales
    # whatever lr the family set (ProGAN's stage lr, StyleGAN2's lazy correction). None: constant.
    lr_decay_from: int | None = None

    def lr_scale(self, step: int, steps: int) -> float:
        """The factor on every lr at G step `step` (1-based) of `steps`."""
        if self.lr_decay_from is None or step <= self.lr_decay_from:
            return 1.0
        return max(0.0, (steps - step + 1) / (steps - self.lr_decay_from + 1))

    def __post_init__(self):
        _check(self.g_lr > 0, "optim.g_lr", "must be > 0")
        _check(self.d_lr > 0, "optim.d_lr", "must be > 0")
        _check(all(0 <= b < 1 for b in self.betas), "optim.betas", "each must be in [0, 1)")
        _check(self.d_steps_per_g >= 1, "optim.d_steps_per_g", "must be >= 1")
        _check(0 <= self.ema_decay < 1, "optim.ema_decay", "must be in [0, 1)")
        _check(self.ema_start >= 0, "optim.ema_start", "must be >= 0")
        _check(self.ema_bn_samples >= 0, "optim.ema_bn_samples", "must be >= 0 (0 = off)")
        _check(self.ema_rampup is None or self.ema_rampup > 0, "optim.ema_rampup", "must be > 0 or null")
        _check(self.lr_decay_from is None or self.lr_decay_from >= 0, "optim.lr_decay_from", "must be >= 0 or null")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    steps: int = 1000             # G steps in total (a resumed run continues up to this count)
    batch_size: int = 64          # per worker; the global batch is batch_size * scaling.num_workers
    seed: int = 0
    log_every: int = 50           # steps between metric reports
    sample_every: int = 200       # steps between sample grids (0 = only at the end)
    checkpoint_every: int = 200   # steps between full-state checkpoints (the last step always)
    keep_checkpoints: int = 2     # newest checkpoints kept on storage
    run_name: str | None = None   # reuse a name to resume that run; None = "<preset>-<time>"
    # Ray Train storage: a local/NFS path (made absolute) or s3://BUCKET/prefix, gs://BUCKET/prefix
    # (file:/// too). On a multi-node cluster it must be shared by all nodes. None =
    # $GANFORGE_HOME/ray_results.
    storage_path: str | None = None
    precision: Literal["auto", "bf16", "fp32"] = "auto"   # auto = bf16 autocast on GPU only
    # Layout of G's and D's weights and of the real batches. auto = channels_last (NHWC) on a GPU
    # under bf16, where it is cuDNN's fast path, else contiguous (NCHW). channels_last also helps
    # oneDNN's CPU convolutions (BigGAN 32 px on one core: ~12% faster per step).
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    # torch.compile of the trained networks (after DDP wrapping, as PyTorch documents): off
    # (YAML reads it as false), default (or true), max-autotune-no-cudagraphs (also tunes GEMM and
    # conv choices: minutes at start), or auto = default on a GPU, off elsewhere (on a CPU the
    # first step pays tens of seconds of C++ compilation). Penalties that differentiate twice
    # (R1, WGAN-GP, path length) call the eager network: compiled graphs have no double
    # backward. A growth stage change recompiles.
    compile: Literal["auto", False, True, "default", "max-autotune-no-cudagraphs"] = "auto"
    # Fault-injection for testing recovery: rank 1 (or 0 with one worker) raises once at this step.
    inject_failure_at: int | None = None

    def __post_init__(self):
        _check(self.steps >= 1, "train.steps", "must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        for k in ("log_every", "checkpoint_every"):
            _check(getattr(self, k) >= 1, f"train.{k}", "must be >= 1")
        _check(self.sample_every >= 0, "train.sample_every", "must be >= 0")
        _check(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
        if self.storage_path is not None:
            from pipeline.tracking import storage
            try:
                storage.normalize(self.storage_path)
            except storage.StorageError as e:
                raise ConfigError(str(e)) from None


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    uri: str | None = None        # None = $MLFLOW_TRACKING_URI, else sqlite under $GANFORGE_HOME
    experiment: str = "ganforge"
    samples: int = 64             # images in each sample grid (fixed latents, fixed classes)
    log_checkpoint: bool = True   # log the final checkpoint as an MLflow artifact
    register: bool = True         # register the final EMA generator in the MLflow model registry
    model_name: str | None = None  # registered model name; None = ganforge-<family>
    model_alias: str | None = None  # also point this alias at the new version (e.g. "champion")
    # Also log G through torch.export (the `pytorch` flavor: loads without ganforge's code). Off:
    # the pyfunc flavor only; torch.export takes seconds per G on a CPU, and refuses some ops.
    export_pt2: bool = True


@dataclass(frozen=True, kw_only=True)
class ScalingConfig:
    num_workers: int = 2          # workers to run (the most, when min_workers is set)
    # Node loss: None = wait until num_workers fit again (a replacement node); an int k makes the
    # run elastic: Ray Train restarts with as many workers as fit, between k and num_workers, and
    # grows back when nodes return. batch_size is per worker, so the global batch shrinks with the
    # worker count; learning rates are not rescaled (see README, "Node loss").
    min_workers: int | None = None
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 2         # worker-group restarts from the latest checkpoint
    address: str | None = None    # None = start a local Ray; "auto" or host:port joins a cluster

    def __post_init__(self):
        _check(self.num_workers >= 1, "scaling.num_workers", "must be >= 1")
        _check(self.min_workers is None or 1 <= self.min_workers <= self.num_workers,
               "scaling.min_workers", f"must be in [1, scaling.num_workers={self.num_workers}]")
        _check(self.cpus_per_worker > 0, "scaling.cpus_per_worker", "must be > 0")
        _check(self.max_failures >= 0, "scaling.max_failures", "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class AugConfig:
    # Augmentation of everything D sees (reals and fakes, in D's, G's and R1/GP's terms), for any
    # family. none = off (the step is bit-identical to no aug section); diffaugment = Zhao et al.
    # 2020, `policy` on every image; ada = Karras et al. 2020, stylegan2-ada's geometric + colour
    # pipeline per sample with probability p, steered from D's sign on reals. p is checkpointed
    # family state and logged as aug_p (with ada_sign = E[sign D(real)]).
    kind: Literal["none", "diffaugment", "ada"] = "none"
    policy: str = "color,translation,cutout"   # DiffAugment ops, comma-separated, in order
    ada_target: float = 0.6       # target of E[sign D(real)], in (0, 1); above it p rises
    ada_speed_kimg: float = 500.0  # thousand images for p to move by 1 (stylegan2-ada's ada_kimg); > 0
    ada_p_init: float = 0.0       # p at the start of a fresh run, in [0, ada_p_max]
    ada_p_max: float = 1.0        # p never exceeds this, in [0, 1]
    # stylegan2-ada's --augpipe: bgc (geometric then colour, its default) or bg (geometric only).
    # bg for images whose colours are the data: on white-on-black silhouettes bgc's luma flip
    # leaked, G drawing inverted animals at p 0.06 (README "Augmentation on a tiny set").
    ada_pipeline: Literal["bgc", "bg"] = "bgc"

    def __post_init__(self):
        ops = [p.strip() for p in self.policy.split(",") if p.strip()]
        _check(bool(ops) and all(p in ("color", "translation", "cutout") for p in ops), "aug.policy",
               f"{self.policy!r}: a comma-separated subset of color, translation, cutout")
        _check(0 < self.ada_target < 1, "aug.ada_target", f"{self.ada_target} not in (0, 1)")
        _check(self.ada_speed_kimg > 0, "aug.ada_speed_kimg", "must be > 0")
        _check(0 <= self.ada_p_max <= 1, "aug.ada_p_max", f"{self.ada_p_max} not in [0, 1]")
        _check(0 <= self.ada_p_init <= self.ada_p_max, "aug.ada_p_init",
               f"{self.ada_p_init} not in [0, aug.ada_p_max={self.ada_p_max}]")


@dataclass(frozen=True, kw_only=True)
class Config:
    model: Any                    # the registered family's own config dataclass
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)   # in-loop evaluation (off by default)
    aug: AugConfig = field(default_factory=AugConfig)     # D's augmentation (off by default)
    preset: str = "custom"        # the preset file it came from, for run names


# ---------------------------------------------------------------- validation

def _field_types(cls) -> dict[str, Any]:
    """Annotations of the dataclass `cls`'s init fields (no ClassVars)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _forbid_extra(tp: Any) -> None:
    """Make pydantic reject unknown keys of every dataclass in annotation `tp`, nested ones too.

    pydantic ignores extra keys of a stdlib dataclass unless the class carries
    `__pydantic_config__`. It is set here, from outside, because the classes stay plain stdlib
    dataclasses: the model configs live in models/, which must import without pydantic.
    """
    if dataclasses.is_dataclass(tp) and "__pydantic_config__" not in vars(tp):
        tp.__pydantic_config__ = {"extra": "forbid"}
        for sub in _field_types(tp).values():
            _forbid_extra(sub)
    for arg in typing.get_args(tp):
        _forbid_extra(arg)


@functools.lru_cache(maxsize=None)
def _adapter(tp: Any) -> pydantic.TypeAdapter:
    """One TypeAdapter per annotation, built on first use: from_dict runs once per Tune trial."""
    _forbid_extra(tp)
    return pydantic.TypeAdapter(tp)


def _non_optional(tp: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, else (`tp`, False)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return tp, False


def _walk(tp: Any, prefix: str, loc: tuple) -> tuple[str, Any]:
    """The dotted key of pydantic error location `loc` in a `tp` at `prefix`, and the annotation
    there (None past the known fields, as at an unknown key)."""
    key = prefix
    for part in loc:
        inner = _non_optional(tp)[0]
        if isinstance(part, int):               # a tuple item
            args = typing.get_args(inner) if typing.get_origin(inner) is tuple else ()
            key, tp = f"{key}[{part}]", (args[0] if args[-1:] == (Ellipsis,) else
                                         args[part] if part < len(args) else None)
        else:
            key = f"{key}.{part}" if key else str(part)
            tp = _field_types(inner).get(part) if dataclasses.is_dataclass(inner) else None
    return key, tp


_EXPECTED = {
    "int_type": "an integer", "float_type": "a number", "bool_type": "true/false",
    "string_type": "a string", "tuple_type": "a list", "list_type": "a list",
    "dataclass_type": "a mapping", "dataclass_args_type": "a mapping", "dict_type": "a mapping",
}


def _message(err: dict, tp: Any, prefix: str) -> str:
    """A pydantic error (validating `tp` at `prefix`) as "dotted.key: problem"."""
    kind, loc, value = err["type"], err["loc"], err.get("input")
    if kind in ("value_error", "assertion_error"):
        # A __post_init__ check. The sections' own raise ConfigError with the full dotted key;
        # model configs raise ValueError("field: problem"), relative to their section.
        e = err.get("ctx", {}).get("error", err["msg"])
        key = _walk(tp, prefix, loc)[0]
        return str(e) if isinstance(e, ConfigError) else f"{key}.{e}" if key else str(e)
    if kind == "missing" and loc and isinstance(loc[-1], int):
        kind, loc = "too_short", loc[:-1]       # a short list for a fixed-length tuple
    key, at = _walk(tp, prefix, loc)
    at, nullable = _non_optional(at)
    or_null = " (or null)" if nullable else ""
    if kind == "unexpected_keyword_argument":
        parent = _non_optional(_walk(tp, prefix, loc[:-1])[1])[0]
        known = sorted(_field_types(parent)) if dataclasses.is_dataclass(parent) else []
        return f"{key}: unknown key (known: {', '.join(known)})"
    if kind == "literal_error":
        choices = (list(typing.get_args(at)) if typing.get_origin(at) is Literal
                   else err["ctx"]["expected"])
        return f"{key}: must be one of {choices}{or_null}, got {value!r}"
    if kind in ("too_short", "too_long"):
        return f"{key}: expected {len(typing.get_args(at))} items, got {len(value)}"
    if kind == "missing":
        return f"{key}: required, not set"
    if kind in _EXPECTED:
        return f"{key}: expected {_EXPECTED[kind]}{or_null}, got {value!r}"
    return f"{key}: {err['msg']}, got {value!r}"


def _unjsonable(x: Any, key: str) -> tuple[str, Any] | None:
    """(dotted key, value) of the first thing in `x` that JSON cannot carry (a YAML date, ...)."""
    plain = (str, int, float, bool, type(None))
    if isinstance(x, dict):
        items = [(f"{key}.{k}" if key else str(k), k if not isinstance(k, plain) else v)
                 for k, v in x.items()]
    elif isinstance(x, (list, tuple)):
        items = [(f"{key}[{i}]", v) for i, v in enumerate(x)]
    else:
        return None if isinstance(x, plain) else (key, x)
    return next(filter(None, (_unjsonable(v, k) for k, v in items)), None)


def _validate(tp: Any, value: Any, key: str) -> Any:
    """`value` (plain YAML data) validated as annotation `tp`, in pydantic's strict JSON mode.

    Strict JSON mode is exactly the config's rule: no "3" -> 3, 1.5 -> int or "yes" -> bool, but
    ints are taken for floats (and become floats) and lists for tuples (and become tuples).
    """
    try:
        blob = json.dumps(value)
    except (TypeError, ValueError):
        where, bad = _unjsonable(value, key) or (key, value)
        raise ConfigError(f"{where}: expected plain data (a string, number, true/false, null, "
                          f"list or mapping), got {bad!r}") from None
    try:
        return _adapter(tp).validate_json(blob, strict=True)
    except pydantic.ValidationError as e:
        # The first error, unknown keys first: a misspelt key often explains the rest.
        errors = sorted(e.errors(include_url=False),
                        key=lambda err: err["type"] != "unexpected_keyword_argument")
        raise ConfigError(_message(errors[0], tp, key)) from None
    except TypeError as e:        # a __post_init__ that failed on its own, not on a value
        raise ConfigError(f"{key}: {e}") from None


def from_dict(d: dict) -> Config:
    d = dict(d)
    _check(isinstance(d.get("model"), dict), "model", "missing section (needs at least model.name)")
    model = dict(d.pop("model"))
    name = model.pop("name", None)
    from pipeline import families   # the families import their networks; config stays light

    _check(name in families.names(), "model.name",
           f"unknown model {name!r} (known: {', '.join(families.names())})")
    model_cfg = _validate(families.config_class(name), model, "model")
    hints = typing.get_type_hints(Config)
    for k in d:
        _check(k in hints and k != "model", k,
               f"unknown section (known: model, {', '.join(s for s in hints if s != 'model')})")
    kwargs = {k: _validate(hints[k], v, k) for k, v in d.items()}
    cfg = Config(model=model_cfg, **kwargs)
    _cross_check(cfg)
    return cfg


def _cross_check(cfg: Config) -> None:
    res = getattr(cfg.model, "resolution", None)
    if res is not None:
        _check(res == cfg.data.resolution, "data.resolution",
               f"{cfg.data.resolution} differs from model.resolution {res}")
    decay = cfg.optim.lr_decay_from
    _check(decay is None or decay < cfg.train.steps, "optim.lr_decay_from",
           f"{decay} is not before train.steps {cfg.train.steps}: the lr would never decay")
    from pipeline import families

    for key, msg in families.of(cfg).config_problems():
        _check(False, key, msg)


def to_dict(cfg: Config) -> dict:
    d = dataclasses.asdict(cfg)
    from pipeline import families

    d["model"] = {"name": families.name_of(cfg.model), **dataclasses.asdict(cfg.model)}
    return _plain(d)


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_hash(cfg: Config) -> str:
    blob = json.dumps(to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------- loading

PRESET_DIR = Path(__file__).resolve().parents[2] / "jobs" / "configs"


def find_yaml(name_or_path: str, directory: Path, what: str) -> Path:
    """A YAML file by path, or by preset name in `directory`; `what` names the input in errors."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (directory / name_or_path, directory / f"{name_or_path}.yaml"):
        if cand.is_file():
            return cand
    known = ", ".join(sorted(q.stem for q in directory.glob("*.yaml")))
    raise ConfigError(f"{what}: no file or preset named {name_or_path!r} (presets: {known})")


def resolve_preset(name_or_path: str) -> Path:
    return find_yaml(name_or_path, PRESET_DIR, "config")


def apply_override(d: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected key=value")
    key, raw = override.split("=", 1)
    key = key.strip()
    value = yaml.safe_load(raw) if raw.strip() else None
    parts = key.split(".")
    node = d
    for i, p in enumerate(parts[:-1]):
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{'.'.join(parts[:i + 1])}: is a value, cannot set {key}")
        node = nxt
    node[parts[-1]] = value


def load(path: str, overrides: list[str] = ()) -> Config:
    p = resolve_preset(path)
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {p}: not valid YAML: {e}") from None
    _check(isinstance(d, dict), str(p), "top level must be a mapping")
    for o in overrides:
        apply_override(d, o)
    d.setdefault("preset", p.stem)
    return from_dict(d)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def ganforge_home() -> Path:
    """Project-local working folder for the embedded defaults (sqlite MLflow, Ray storage, data)."""
    return Path(os.environ.get("GANFORGE_HOME", Path.cwd() / ".ganforge")).resolve()
