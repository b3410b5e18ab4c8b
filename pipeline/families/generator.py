"""A trained generator: a family bound to its sample networks, and the one loader that rebuilds
it from a checkpoint or a generator folder (registry URIs resolve to a folder in
pipeline.tracking.registry, then come here).

A generator folder holds `weights.pt` (the sample networks' EMA weights as one flat state dict,
"G.net.0.weight": tensor, loaded with `weights_only=True`), `config.yaml` (the resolved run
config; its model section rebuilds the networks) and `ganforge_model.json` (family, inputs,
config hash, sha256 of every payload file). The same folder is the pyfunc model's artifacts, the
output of `ganforge pull`, and what `ganforge sample DIR` reads: one loader, one integrity check.

Why no safetensors: it is not a dependency yet, and torch 2.14's `weights_only` unpickler
admits only tensors and primitive containers, so a state dict loads without running code.
Every load checks the sha256 first, so a swapped file is refused before it is parsed at all.
"""
from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from pipeline import config as C
from pipeline import families
from pipeline.engine import checkpoint as ckpt
from pipeline.engine.checkpoint import sha256_file
from pipeline.families import sampling
from pipeline.families.spec import Caption, Categorical, ClassLabel, Domain, Family, Latent, Nets, SourceImage

MANIFEST, WEIGHTS, CONFIG, PT2 = "ganforge_model.json", "weights.pt", "config.yaml", "model.pt2"
FORMAT = "ganforge-generator/2"
FORMATS = ("ganforge-generator/1", FORMAT)   # /1: weights.pt was G's bare state dict


class GeneratorError(RuntimeError):
    """A generator folder or model that is missing, not ours, or fails its integrity check."""


def ganforge_version() -> str:
    try:
        return metadata.version("ganforge")
    except metadata.PackageNotFoundError:
        return "unknown"


class Generator:
    """`family.generate` over its sample networks (eval mode, no grads), with the one sampler."""

    def __init__(self, family: Family, nets: Nets, cfg: C.Config | None = None, step: int = 0):
        self.family, self.nets, self.cfg, self.step = family, nets, cfg, step
        for m in nets.values():
            m.eval().requires_grad_(False)

    @classmethod
    def view(cls, family: Family, nets: Nets) -> Generator:
        """Sample live training networks without changing their modes or grad flags."""
        gen = cls.__new__(cls)
        gen.family, gen.nets, gen.cfg, gen.step = family, nets, None, 0
        return gen

    @property
    def specs(self):
        return self.family.inputs()

    @property
    def num_classes(self) -> int:
        c = self.specs.get("cls")
        return c.num_classes if isinstance(c, ClassLabel) else 0

    def labels(self, inputs: dict) -> torch.Tensor | None:
        """What metrics compare with the oracle: the class asked for, else the first categorical
        code, else None."""
        for name, s in self.specs.items():
            if isinstance(s, (ClassLabel, Categorical)):
                return inputs[name]
        return None

    def to(self, device) -> Generator:
        for m in self.nets.values():
            m.to(device)
        return self

    def batch(self, start: int, stop: int, *, seed: int = 0, truncation: float | None = None,
              fixed: dict | None = None) -> tuple[torch.Tensor, dict]:
        """(float [-1, 1] images, their CPU inputs) of samples [start, stop)."""
        if fixed:
            self.family.check_fixed(self.nets, fixed)
        x = sampling.inputs(self.specs, start, stop, seed=seed, truncation=truncation, fixed=fixed)
        return sampling.images(self.family, self.nets, start, stop, given=x), x

    def sample(self, n: int, seed: int = 0, truncation: float | None = None,
               fixed: dict | None = None) -> torch.Tensor:
        """n images, uint8 N x 3 x H x W on the CPU; the same arguments give the same bytes."""
        return sampling.sample(self.family, self.nets, n, seed, truncation, fixed)

    @property
    def translates(self) -> bool:
        """An image-to-image generator (pix2pix, CycleGAN, StarGAN): it takes images, not noise."""
        return self.family.translates

    @property
    def text_input(self) -> str | None:
        """The name of the caption input (what `--prompt` fixes), None for a model without text."""
        return next((k for k, s in self.specs.items() if isinstance(s, Caption)), None)

    @property
    def domain_input(self) -> str | None:
        """The name of the target-domain input (what `--to` fixes), None if there is no choice."""
        return next((k for k, s in self.specs.items() if isinstance(s, Domain)), None)

    @property
    def domains(self) -> tuple[str, ...]:
        """The target domains a translator can be asked for (--to); () if it has no choice."""
        k = self.domain_input
        return self.specs[k].names if k else ()

    def translate(self, images: torch.Tensor, fixed: dict | None = None, seed: int = 0) -> torch.Tensor:
        """Translate uint8 N x 3 x H x W images (resized to the model's resolution if they are
        not at it) -> uint8 N x 3 x R x R on the CPU; the same images and arguments, the same bytes."""
        if not self.translates:
            raise ValueError("this generator makes images from noise; use sample(), not translate()")
        r = next(s.resolution for s in self.specs.values() if isinstance(s, SourceImage))
        x = _fitted(images, r)
        given = sampling.inputs(self.specs, 0, len(x), seed=seed, fixed=fixed, images=x)
        return sampling.to_uint8(sampling.images(self.family, self.nets, 0, len(x), given=given)).cpu()

    @property
    def encodes(self) -> bool:
        """A generator with an encoder (BiGAN/ALI, VAE-GAN): images map to latents and back."""
        return "E" in self.nets and hasattr(self.family, "encode")

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """uint8 N x 3 x H x W images (resized to the model's resolution if they are not at it)
        -> float32 latents [N, z_dim] on the CPU: E's output (its mean, for a stochastic E)."""
        if not self.encodes:
            raise ValueError(f"a {self.family.name} generator has no encoder; encode needs BiGAN/ALI or VAE-GAN")
        x = _fitted(images, self.resolution())
        E = self.nets["E"]
        dev = next(E.parameters()).device
        return torch.cat([self.family.encode(self.nets, x[i:i + batch].to(dev)).float().cpu()
                          for i in range(0, len(x), batch)])

    def reconstruct(self, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents as encode() gives them, G's images of them: uint8 N x 3 x R x R on the CPU).
        The same images give the same bytes."""
        z = self.encode(images, batch)
        return z, self.sample_latents(z)

    def sample_latents(self, z: torch.Tensor) -> torch.Tensor:
        """G's images of given latents z [N, z_dim] -> uint8 N x 3 x R x R on the CPU."""
        return sampling.to_uint8(sampling.images(self.family, self.nets, 0, len(z), given={"z": z.float()})).cpu()

    def resolution(self) -> int:
        return int(sampling.images(self.family, self.nets, 0, 2, given=sampling.probe(self.specs)).shape[-1])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{n}.{k}": v.detach().cpu().contiguous().clone()
                for n, m in self.nets.items() for k, v in m.state_dict().items()}

    def load_flat(self, flat: dict[str, torch.Tensor]) -> None:
        for n, m in self.nets.items():
            m.load_state_dict({k[len(n) + 1:]: v for k, v in flat.items() if k.startswith(n + ".")})


def _fitted(images: torch.Tensor, r: int) -> torch.Tensor:
    """uint8 [n, 3, H, W] -> float [-1, 1] at r x r (bilinear with antialias, as training data is fitted)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected uint8 [n, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    x = images.float() / 127.5 - 1
    if x.shape[-2:] != (r, r):
        x = torch.nn.functional.interpolate(x, size=(r, r), mode="bilinear", antialias=True,
                                            align_corners=False).clamp(-1, 1)
    return x


class _ModuleFamily(Family):
    """A bare G(z[, y]) module seen as a family (tests and hand-made generators)."""
    name = "module"

    def __init__(self, G):
        self.G = G

    def inputs(self):
        z = {"z": Latent(int(self.G.z_dim))}
        k = int(getattr(self.G, "num_classes", 0) or 0)
        return {**z, "cls": ClassLabel(k)} if k else z

    def generate(self, nets, inputs):
        return nets["G"](inputs["z"], inputs.get("cls"))


def as_generator(G) -> Generator:
    """A Generator, or a bare G(z[, y]) module (with .z_dim, .num_classes) wrapped as one."""
    return G if isinstance(G, Generator) else Generator.view(_ModuleFamily(G), {"G": G})


# ---------------------------------------------------------------- from a checkpoint

def from_state(state: dict, device="cpu", ema: bool = True) -> Generator:
    """The sample networks of a loaded training state (EMA copies where the family keeps them)."""
    state = ckpt.unpack(state)
    cfg = C.from_dict(state["config"])
    fam = families.of(cfg)
    built = fam.build()
    nets = {}
    for n in fam.sample_nets:
        src = state["ema"].get(n) if ema and n in state["ema"] else state["nets"][n]
        built[n].load_state_dict(src)
        nets[n] = built[n].to(device)
    return Generator(fam, nets, cfg, int(state.get("step", 0)))


def from_checkpoint(directory: str | Path, device="cpu", ema: bool = True) -> Generator:
    return from_state(ckpt.load(directory), device, ema)


# ---------------------------------------------------------------- generator folders

def write_folder(gen: Generator, cfg: C.Config, out: Path, *, step: int, extra: dict | None = None) -> dict:
    """Write weights, config and manifest of `gen` into `out`; return the manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(gen.state_dict(), out / WEIGHTS)
    (out / CONFIG).write_text(C.dump_yaml(cfg))
    specs = gen.specs
    z = specs.get("z")
    manifest = {
        "format": FORMAT, "family": families.name_of(cfg.model), "config_hash": C.config_hash(cfg),
        "step": int(step), "nets": sorted(gen.nets), **gen.family.describe(),
        "z_dim": int(z.dim) if isinstance(z, Latent) else 0, "num_classes": gen.num_classes,
        "resolution": gen.resolution(), "ganforge_version": ganforge_version(),
        "files": {WEIGHTS: sha256_file(out / WEIGHTS), CONFIG: sha256_file(out / CONFIG)},
        **(extra or {}),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def read_manifest(folder: Path, what: str | None = None) -> dict:
    """The manifest of a generator folder; `what` names the thing in errors (a URI or path)."""
    what = what or str(folder)
    p = Path(folder) / MANIFEST
    if not p.is_file():
        raise GeneratorError(f"{what}: not a ganforge generator (no {MANIFEST}); "
                             "use a models:/ URI or a folder made by `ganforge pull`")
    try:
        m = json.loads(p.read_text())
    except ValueError:
        raise GeneratorError(f"{what}: {MANIFEST} is not valid JSON; pull the model again") from None
    if m.get("format") not in FORMATS:
        raise GeneratorError(f"{what}: {MANIFEST} has format {m.get('format')!r}, expected one of "
                             f"{list(FORMATS)}; upgrade ganforge or re-register the model")
    return m


def verify(folder: Path, manifest: dict, what: str | None = None) -> None:
    """Refuse any payload file whose sha256 differs from the manifest's."""
    for name, want in manifest["files"].items():
        p = Path(folder) / name
        if not p.is_file():
            raise GeneratorError(f"{what or folder}: {name} is missing; pull the model again")
        got = sha256_file(p)
        if got != want:
            raise GeneratorError(f"{p}: sha256 {got[:12]}... does not match the logged {want[:12]}...; "
                                 "the file was altered or corrupted, pull the model again")


def load_folder(folder: str | Path, device: str | torch.device = "cpu", what: str | None = None) -> Generator:
    """Verified generator from a folder: eval mode, on `device`, no grads."""
    folder = Path(folder)
    m = read_manifest(folder, what)
    verify(folder, m, what)
    cfg = C.from_dict(yaml.safe_load((folder / CONFIG).read_text()))
    fam = families.of(cfg)
    built = fam.build()
    gen = Generator(fam, {n: built[n] for n in fam.sample_nets}, cfg, int(m.get("step", 0)))
    try:
        flat = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as e:   # weights_only refuses pickled code: report it, never run it
        raise GeneratorError(f"{folder / WEIGHTS}: refused to load ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]}); it is not a plain state dict") from None
    if m["format"] == FORMATS[0]:
        flat = {f"G.{k}": v for k, v in flat.items()}
    gen.load_flat(flat)
    return gen.to(device)


def load(source: str | Path, device="cpu") -> Generator:
    """A generator folder or a training checkpoint folder (registry URIs: tracking.registry)."""
    p = Path(source)
    if (p / MANIFEST).is_file():
        return load_folder(p, device)
    if (p / ckpt.META).is_file():
        return from_checkpoint(p, device)
    raise GeneratorError(f"{source}: neither a generator folder ({MANIFEST}) nor a checkpoint "
                         f"({ckpt.META}); give a models:/NAME@ALIAS URI or a folder from `ganforge pull`")


# ---------------------------------------------------------------- torch.export

class _Exported(nn.Module):
    """generate() with the family's inputs as positional tensors, for torch.export."""

    def __init__(self, gen: Generator):
        super().__init__()
        self.family, self.names = gen.family, list(gen.specs)
        self.nets = nn.ModuleDict(gen.nets)

    def forward(self, *args):
        return self.family.generate(dict(self.nets), dict(zip(self.names, args)))


def export_pt2(gen: Generator, path: Path) -> None:
    """torch.export the generator for the `pytorch` flavor; inputs in the order of family.inputs()
    (float noise/codes, int64 classes and categorical codes); batch size stays dynamic."""
    from torch.export import Dim

    n = 2   # torch.export specializes a size-1 batch to a constant
    args = tuple(sampling.probe(gen.specs, n).values())
    dyn = tuple({0: Dim.AUTO} for _ in args)
    # forward(*args): the dynamic shapes of the one varargs parameter are a tuple of its own.
    torch.export.save(torch.export.export(_Exported(gen).eval(), args, dynamic_shapes=(dyn,)), str(path))
