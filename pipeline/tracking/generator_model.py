"""A trained generator as plain files, and the MLflow model that carries them.

A generator folder holds `weights.pt` (the EMA state dict: tensors only, loaded with
`weights_only=True`), `config.yaml` (the resolved run config; its model section rebuilds the
network) and `ganforge_model.json` (family, config hash, sha256 of every payload file). The
same folder is the pyfunc model's artifacts, the output of `ganforge pull`, and what
`ganforge sample DIR` reads, so there is one loader and one integrity check for all three.

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

import models
from pipeline import config as C
from pipeline.engine.checkpoint import sha256_file

MANIFEST, WEIGHTS, CONFIG, PT2 = "ganforge_model.json", "weights.pt", "config.yaml", "model.pt2"
FORMAT = "ganforge-generator/1"


class GeneratorError(RuntimeError):
    """A generator folder or model that is missing, not ours, or fails its integrity check."""


def ganforge_version() -> str:
    try:
        return metadata.version("ganforge")
    except metadata.PackageNotFoundError:
        return "unknown"


def write_folder(G: nn.Module, cfg: C.Config, out: Path, *, step: int, extra: dict | None = None) -> dict:
    """Write weights, config and manifest for generator `G` (left in eval mode) into `out`;
    return the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    n_cls = int(getattr(G, "num_classes", 0))
    with torch.no_grad():     # the output size, not the config's: a ProGAN may not be fully grown
        res = G.eval()(torch.zeros(2, G.z_dim), torch.zeros(2, dtype=torch.long) if n_cls else None).shape[-1]
    state = {k: v.detach().cpu().contiguous().clone() for k, v in G.state_dict().items()}
    torch.save(state, out / WEIGHTS)
    (out / CONFIG).write_text(C.dump_yaml(cfg))
    manifest = {
        "format": FORMAT, "family": models.family_of(cfg.model), "config_hash": C.config_hash(cfg),
        "step": int(step), "z_dim": int(G.z_dim), "num_classes": n_cls, "resolution": int(res),
        "ganforge_version": ganforge_version(),
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
    if m.get("format") != FORMAT:
        raise GeneratorError(f"{what}: {MANIFEST} has format {m.get('format')!r}, expected {FORMAT!r}; "
                             "upgrade ganforge or re-register the model")
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


def load_folder(folder: str | Path, device: str | torch.device = "cpu", what: str | None = None) -> nn.Module:
    """Verified generator from a folder: eval mode, on `device`, no grads."""
    folder = Path(folder)
    m = read_manifest(folder, what)
    verify(folder, m, what)
    cfg = C.from_dict(yaml.safe_load((folder / CONFIG).read_text()))
    G = models.build(cfg.model)["G"]
    try:
        state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as e:   # weights_only refuses pickled code: report it, never run it
        raise GeneratorError(f"{folder / WEIGHTS}: refused to load ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]}); it is not a plain state dict") from None
    G.load_state_dict(state)
    return G.eval().requires_grad_(False).to(device)


def export_pt2(G: nn.Module, path: Path) -> None:
    """torch.export the generator for the `pytorch` flavor; batch size stays dynamic."""
    from torch.export import Dim

    n = 2   # torch.export specializes a size-1 batch to a constant
    z = torch.zeros(n, G.z_dim)
    if getattr(G, "num_classes", 0):
        args, dyn = (z, torch.zeros(n, dtype=torch.long)), ({0: Dim.AUTO}, {0: Dim.AUTO})
    else:
        args, dyn = (z,), ({0: Dim.AUTO},)
    torch.export.save(torch.export.export(G.eval(), args, dynamic_shapes=dyn), str(path))
