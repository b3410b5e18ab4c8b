"""`ganforge register|promote|models|pull|sample`: the model registry from the command line.

Failures raise; jobs/cli.py's main() turns them into one stderr line that names the thing and
what to do. Heavy imports happen inside the commands, after _cli_env().
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import click


def _cli_env() -> None:
    """MLflow settings for a person at a terminal; call before the first mlflow import."""
    # MLflow retries a dead server for minutes by default; a person at a terminal wants a line.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Keep stderr for the one-line error: no download progress bars, no INFO chatter.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


@click.command(short_help="register a run's EMA generator in the MLflow model registry")
@click.argument("run_id")
@click.option("--name", help="registered model name (default: ganforge-FAMILY)")
@click.option("--alias", help="also point this alias (e.g. champion) at the new version")
def register(run_id, name, alias) -> int:
    """Register a finished run's EMA generator in the MLflow model registry.

    RUN_ID is the MLflow run id (printed at the end of training).
    """
    _cli_env()
    from pipeline.tracking import registry

    mv = registry.register_run(run_id, name=name, alias=alias)
    tag = f" @{alias}" if alias else ""
    print(f"registered {mv.name} version {mv.version}{tag} from run {run_id}")
    print(f"  handle: models:/{mv.name}/{mv.version}" + (f"  or  models:/{mv.name}@{alias}" if alias else ""))
    return 0


@click.command(short_help="point an alias (e.g. champion) at a version, or --remove it")
@click.argument("name")
@click.argument("version", required=False)
@click.option("--alias", required=True)
@click.option("--remove", is_flag=True, help="delete the alias instead")
def promote(name, version, alias, remove) -> int:
    """Point an alias (e.g. champion) at a version of NAME, or --remove it.

    VERSION is the version number (not needed with --remove).
    """
    _cli_env()
    from pipeline.tracking import registry

    if remove:
        registry.remove_alias(name, alias)
        print(f"removed alias {alias} from {name}")
        return 0
    if version is None:
        raise click.UsageError(f"{name}: give the VERSION to point @{alias} at "
                               "(or --remove to delete the alias)")
    registry.promote(name, version, alias)
    print(f"models:/{name}@{alias} -> version {version}")
    return 0


@click.command(short_help="list registered generators: versions, aliases, metrics")
@click.argument("name", required=False)
def models(name) -> int:
    """List registered generators (all, or those named NAME): versions, aliases, metrics."""
    _cli_env()
    from pipeline.tracking import registry

    rows = registry.list_versions(name)
    if not rows:
        print("no registered models (register one with `ganforge register RUN_ID`)")
        return 0
    head = ("NAME", "VERSION", "ALIASES", "STEP", "METRICS", "CREATED", "RUN")
    table = [head] + [
        (r["name"], r["version"], ",".join(r["aliases"]) or "-", r["step"] or "-",
         " ".join(f"{k[5:]}={v}" for k, v in sorted(r["metrics"].items())) or "-",
         time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"] / 1000)), r["run_id"][:12] or "-")
        for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


@click.command(short_help="download a generator (weights, config, card) into a folder")
@click.argument("uri")
@click.option("--out", required=True, help="folder to create (must not exist)")
def pull(uri, out) -> int:
    """Download a generator (weights, config, model card) into a folder.

    URI is models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/generator.
    """
    _cli_env()
    from pipeline.tracking import registry

    folder = registry.pull(uri, out)
    print(f"pulled {uri} into {folder} (weights.pt, config.yaml, ganforge_model.json, MODEL_CARD.md)")
    return 0


@click.command(short_help="write a PNG grid from a registered or pulled generator")
@click.argument("source")
@click.option("--n", type=int, default=64, help="number of images")
@click.option("--class", "cls", type=int, help="class label (conditional models; default cycles 0..C-1)")
@click.option("--truncation", type=float, help="BigGAN-style: resample |z| above this, e.g. 0.7; StyleGAN2: psi "
              "in w space (w_avg + psi (w - w_avg)), e.g. 0.7")
@click.option("--code", multiple=True, metavar="NAME=VALUE",
              help="fix one latent code for every image (InfoGAN: cat0=3, cont0=0.5); repeatable")
@click.option("--prompt", help="text-to-image models: the caption every image shows, e.g. \"a ring in red "
              "over a cross in green and a dot in blue\" (default: the built-in captions in turn)")
@click.option("--seed", type=int, default=0, help="same seed, same images")
@click.option("--out", required=True, help="grid PNG path")
@click.option("--individual", is_flag=True, help="also one PNG per image in a folder beside it")
@click.option("--device", default="cpu", help="torch device, e.g. cuda")
def sample(source, n, cls, truncation, code, prompt, seed, out, individual, device) -> int:
    """Write a PNG grid from a registered or pulled generator.

    SOURCE is models:/NAME@ALIAS (or /VERSION), runs:/..., a folder from `ganforge pull` or a
    training checkpoint folder.
    """
    _cli_env()
    from pipeline.tracking import registry
    from pipeline.families import sampling

    G = registry.load_generator(source, device=device)
    if G.translates:
        raise ValueError(f"{source}: a {G.family.name} translator takes images, not noise; use "
                         f"`ganforge translate {source} --input IMG_OR_DIR --out DIR`")
    fixed = {"cls": cls}
    for kv in code:
        k, sep, v = kv.partition("=")
        if not sep:
            raise ValueError(f"--code {kv!r}: expected NAME=VALUE, e.g. cat0=3 or cont0=0.5")
        try:
            fixed[k.strip()] = int(v) if v.strip().lstrip("-").isdigit() else float(v)
        except ValueError:
            raise ValueError(f"--code {kv!r}: {v!r} is not a number") from None
    if cls is not None and not G.num_classes:
        raise ValueError(f"--class: {cls} given but the generator is unconditional (drop --class)")
    if prompt is not None:
        key = G.text_input
        if key is None:
            raise ValueError(f"--prompt: {source} is a {G.family.name} generator, which takes no text")
        fixed[key] = prompt
    images = G.sample(n, seed, truncation=truncation, fixed=fixed)
    files = sampling.write_grid(images, out, individual=individual)
    extra = f" and {len(files) - 1} images in {Path(out).with_suffix('')}/" if individual else ""
    print(f"wrote {n} samples (seed {seed}) to {out}{extra}")
    return 0


@click.command(short_help="translate images with a registered or pulled translator")
@click.argument("source")
@click.option("--input", "inp", required=True, metavar="IMG_OR_DIR",
              help="an image file, or a folder of images (searched recursively); each is fitted to "
                   "the model's resolution as training data was")
@click.option("--out", required=True, metavar="DIR",
              help="folder for one PNG per input (same relative path) and grid.png (input | output)")
@click.option("--to", "to", help="target domain, by name or index (StarGAN's domains; CycleGAN: A "
              "or B's name); default: the model's own (pix2pix and CycleGAN translate A -> B)")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", default="cpu", help="torch device, e.g. cuda")
def translate(source, inp, out, to, batch_size, device) -> int:
    """Translate images with an image-to-image generator (pix2pix, CycleGAN, StarGAN).

    SOURCE is models:/NAME@ALIAS (or /VERSION), runs:/..., a folder from `ganforge pull` or a
    training checkpoint folder. Unreadable input files are skipped and named on stderr.
    """
    _cli_env()
    import sys

    import torch

    from pipeline.data.datasets import folder
    from pipeline.tracking import registry

    G = registry.load_generator(source, device=device)
    if not G.translates:
        raise ValueError(f"{source}: a {G.family.name} generator makes images from noise; "
                         f"use `ganforge sample`, not translate")
    fixed = None
    if to is not None:
        key = G.domain_input
        if key is None:
            raise ValueError(f"--to {to}: this {G.family.name} translator has one direction only")
        fixed = {key: to}
    names, images, bad = folder.read_images(inp, G.resolution())
    for name, why in bad:
        print(f"ganforge translate: skipped {name}: {why}", file=sys.stderr)
    outs = torch.cat([G.translate(images[i:i + batch_size], fixed=fixed)
                      for i in range(0, len(images), batch_size)])
    out = Path(out)
    _write_outputs(out, names, images, outs)
    skipped = f"; skipped {len(bad)} unreadable" if bad else ""
    print(f"translated {len(names)} images into {out}{skipped}")
    return 0


@click.command(short_help="images to latents and back (BiGAN/ALI, VAE-GAN models)")
@click.argument("source")
@click.option("--input", "inp", required=True, metavar="IMG_OR_DIR",
              help="an image file, or a folder of images (searched recursively); each is fitted to "
                   "the model's resolution as training data was")
@click.option("--out", required=True, metavar="DIR",
              help="folder for latents.npz (names, z), one reconstruction PNG per input (same "
                   "relative path) and grid.png (input | reconstruction)")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", default="cpu", help="torch device, e.g. cuda")
def encode(source, inp, out, batch_size, device) -> int:
    """Encode images with a generator's encoder E, and reconstruct them as G(E(x)).

    SOURCE is models:/NAME@ALIAS (or /VERSION), runs:/..., a folder from `ganforge pull` or a
    training checkpoint folder, of a family with an encoder (bigan, vaegan). The latents are E's
    output (its mean for ALI and VAE-GAN); `numpy.load(DIR/latents.npz)["z"]` reads them.
    Unreadable input files are skipped and named on stderr.
    """
    _cli_env()
    import sys

    import numpy as np

    from pipeline.data.datasets import folder
    from pipeline.tracking import registry

    G = registry.load_generator(source, device=device)
    if not G.encodes:
        raise ValueError(f"{source}: a {G.family.name} generator has no encoder; encode needs a "
                         f"bigan (BiGAN/ALI) or vaegan model")
    names, images, bad = folder.read_images(inp, G.resolution())
    for name, why in bad:
        print(f"ganforge encode: skipped {name}: {why}", file=sys.stderr)
    z, rec = G.reconstruct(images, batch=batch_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "latents.npz", names=np.array(names), z=z.numpy())
    _write_outputs(out, names, images, rec)
    skipped = f"; skipped {len(bad)} unreadable" if bad else ""
    print(f"encoded {len(names)} images into {out / 'latents.npz'} (z: {tuple(z.shape)}) and "
          f"reconstructions{skipped}")
    return 0


def _write_outputs(out: Path, names: list[str], images, outs) -> None:
    """One PNG per output at its input's relative path, and grid.png: input | output pairs."""
    import torch
    import torchvision.io as tio

    from pipeline.families import sampling

    for name, img in zip(names, outs):
        p = (out / name).with_suffix(".png")
        p.parent.mkdir(parents=True, exist_ok=True)
        tio.write_png(img.contiguous(), str(p))
    k = min(len(images), 32)
    sampling.write_grid(torch.stack([images[:k], outs[:k]], 1).flatten(0, 1), out / "grid.png",
                        nrow=2 * max(1, int(k ** 0.5)))


COMMANDS = [register, promote, models, pull, sample, translate, encode]
