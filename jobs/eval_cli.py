"""`ganforge fit-extractor` and `ganforge evaluate` (COMMANDS, added to the group in jobs/cli.py)."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import NamedTuple

import click


@click.command("fit-extractor", short_help="train the small offline feature extractor (CPU, < 1 min)")
@click.option("--out", help="weights file (default $GANFORGE_HOME/extractors/ganforge-small-shapestack.pt)")
@click.option("--steps", type=int, default=400)
@click.option("--seed", type=int, default=0)
@click.option("--data", type=click.Choice(["shapestack", "animals"]), default="shapestack",
              help="built-in set it learns to read: shapestack's glyphs (ganforge-small-shapestack) "
                   "or the animal of `animals` (ganforge-small-animals, for FID on that set)")
def fit_extractor(out, steps, seed, data) -> int:
    """Train the small offline feature extractor (ganforge-small-shapestack) on built-in
    shapestack, or with --data animals ganforge-small-animals, CPU, < 1 min."""
    from pipeline.evaluation.extractors import small

    meta = small.fit(out, steps=steps, seed=seed, data=data)
    path = Path(out) if out else small.default_path(data)
    print(f"wrote {path} ({meta['name']}, sha256 {meta['sha256'][:16]}..., held-out "
          f"{'glyph' if data == 'shapestack' else 'animal'} accuracy "
          f"{meta['glyph_accuracy']:.4f}, {meta['seconds']:.0f} s)")
    return 0


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


class Target(NamedTuple):
    G: object                  # the generator, eval mode, on CPU
    cfg: object | None         # its run Config (None when the source has none)
    run_id: str | None         # the MLflow run it came from, when given a run id
    step: int                  # training step of the checkpoint (0 if unknown)
    version: tuple[str, str] | None = None   # (registered name, version) for a models:/ URI


def load_generator(target: str, ema: bool = True, tracking_uri: str | None = None) -> Target:
    """Generator from a checkpoint folder (state.pt + meta.json), an MLflow run id whose artifacts
    hold checkpoint/, or a registered generator: models:/ or runs:/ URI, or a folder made by
    `ganforge pull` (through pipeline.tracking.registry, which checks its sha256)."""
    from pipeline.engine import checkpoint
    from pipeline.families import generator as GM

    if target.startswith(("models:/", "runs:/")) or (Path(target) / "ganforge_model.json").is_file():
        return _registered(target, ema, tracking_uri)
    run_id = None
    if Path(target).is_dir():
        state = checkpoint.load(target)
    elif re.fullmatch(r"[0-9a-f]{32}", target):
        from mlflow.tracking import MlflowClient

        from pipeline.tracking.runs import tracking_uri as default_uri
        run_id = target
        with tempfile.TemporaryDirectory(prefix="ganforge-eval-") as td:
            state = checkpoint.load(MlflowClient(tracking_uri or default_uri()).download_artifacts(
                run_id, "checkpoint", td))
    else:
        raise FileNotFoundError(f"{target}: not a checkpoint folder, MLflow run id, generator "
                                "folder or models:/ URI")
    G = GM.from_state(state, ema=ema)
    return Target(G, G.cfg, run_id, G.step)


def _registered(target: str, ema: bool, tracking_uri: str | None) -> Target:
    import yaml

    from pipeline import config as C

    try:
        from pipeline.families import generator as GM
        from pipeline.tracking.registry import fetched
    except ImportError:
        raise ValueError(f"{target}: registered models are not supported yet (no pipeline.tracking.registry); "
                         "pass a checkpoint folder or a run id") from None
    if not ema:
        raise ValueError(f"{target}: a registered generator holds the EMA weights only; drop --no-ema")
    with fetched(target, tracking_uri) as (folder, mv):
        G = GM.load_folder(folder, what=target)
        cfg = C.from_dict(yaml.safe_load((folder / GM.CONFIG).read_text()))
        step = int(GM.read_manifest(folder, target).get("step", 0))
    return Target(G, cfg, mv.run_id if mv else None, step, (mv.name, str(mv.version)) if mv else None)


def _real_data(data: str | None, cfg):
    """-> (shard urls, per-shard counts or None, manifest sha, source, resolution)."""
    import hashlib

    from pipeline.data import resolve_shards, shard_counts

    spec = data or (cfg.data.shards if cfg else None)
    if spec is None:
        if cfg is None:
            raise ValueError("no real data: pass --data (the target carries no config)")
        from jobs.train import builtin_shards
        spec = str(builtin_shards(cfg))
    urls, manifest = resolve_shards(spec)
    if manifest:
        counts = shard_counts(manifest)
        return urls, counts, manifest["sha256"], manifest["path"], manifest["resolution"]
    # No manifest: the spec itself is the fingerprint (weaker: shard contents are not hashed).
    res = cfg.data.resolution if cfg else None
    if res is None:
        raise ValueError(f"{spec}: no manifest to read the resolution from and no config")
    return urls, None, "spec-" + hashlib.sha256(spec.encode()).hexdigest(), spec, res


@click.command(short_help="score a generator: checkpoint DIR, RUN_ID or models:/ URI")
@click.argument("target")
@click.option("--metrics", "metric_names", default="fid,kid,coverage",
              help="comma-separated: fid, fid_per_class, kid, pr, is, coverage, reconstruction "
                   "(BiGAN/ALI and VAE-GAN) and caption (text-to-image: the oracle's caption accuracy); "
                   "an unknown name fails, listing the known")
@click.option("--n", type=int, default=10000, help="generated images")
@click.option("--n-real", type=int, help="real images for the reference (default: all)")
@click.option("--extractor", default="ganforge-small-shapestack",
              help="ganforge-small-shapestack | inception-v3-tf-2015-12-05 | a weights file")
@click.option("--inception-weights", help="file, folder or URL of pt_inception-2015-12-05-6726825d.pth")
@click.option("--data", help="real data shard spec (default: the run config's data)")
@click.option("--batch-size", type=int, default=64)
@click.option("--seed", type=int, default=0)
@click.option("--truncation", type=float, help="as in `ganforge sample`: |z| cut-off, or StyleGAN2's psi")
@click.option("--no-ema", is_flag=True, help="evaluate the raw G instead of G_ema")
@click.option("--device", help="torch device (default: cuda when available, else cpu)")
@click.option("--log", is_flag=True, help="log scores and protocol tags into the MLflow run (RUN_ID only)")
def evaluate(target, metric_names, n, n_real, extractor, inception_weights, data, batch_size, seed,
             truncation, no_ema, device, log) -> int:
    """Score a generator: TARGET is a checkpoint folder (state.pt + meta.json), an MLflow run id,
    or models:/NAME@alias."""
    from jobs.registry_cli import _cli_env

    _cli_env()      # before mlflow loads: no artifact download bar, no retrying a dead server
    from pipeline.evaluation import metrics
    from pipeline.evaluation.extractors import load_extractor
    from pipeline.evaluation.metrics import collect, reference
    from pipeline.evaluation.metrics.protocol import EvalConfig, Protocol

    names = [m.strip() for m in metric_names.split(",") if m.strip()]
    # reconstruction (images through E then G) and caption (one image per built-in caption) are
    # oracle scores of their own, not samples through the sample metrics' path
    own = [m for m in names if m in ("reconstruction", "caption")]
    names = [m for m in names if m not in own]
    known = metrics.list_metrics() + ["reconstruction", "caption"]
    unknown = [m for m in names if m not in known]
    if unknown:   # fail before any work
        raise click.BadParameter(f"unknown {', '.join(unknown)} (known: {', '.join(sorted(known))})",
                                 param_hint="'--metrics'")
    device = device or ("cuda" if _cuda() else "cpu")
    ecfg = EvalConfig(metrics=tuple(names), n_fake=n, n_real=n_real, extractor=extractor,
                      inception_weights=inception_weights, batch_size=batch_size,
                      seed=seed, truncation=truncation, ema=not no_ema)
    G, cfg, run_id, step, version = load_generator(target, ema=ecfg.ema)
    G.to(device)
    rec, notes = {}, []
    if "reconstruction" in own:
        from pipeline.evaluation import reconstruction

        if not G.encodes:
            raise ValueError(f"--metrics reconstruction: {target} is a {G.family.name} generator, "
                             "without an encoder (bigan or vaegan have one)")
        rec.update(reconstruction.builtin_oracle(G, n=min(n, 2000), seed=reconstruction.SEED + seed))
        notes.append(f"reconstruction: shapestack images, seed {reconstruction.SEED + seed}, n={min(n, 2000)}")
    if "caption" in own:
        from pipeline.evaluation import captions

        if G.text_input is None:
            raise ValueError(f"--metrics caption: {target} is a {G.family.name} generator, which "
                             "takes no text (gan_int_cls does)")
        rec.update(captions.builtin_oracle(G, n=n, seed=captions.SEED + seed))
        notes.append(f"caption: built-in captions, seed {captions.SEED + seed}, n={n}")
    if not names:
        for k, v in rec.items():
            print(f"{k:<20}  {v:.6g}")
        print("".join(f"  ({t})\n" for t in notes), end="")
        return 0
    needs = metrics.needs(names)
    feats = None
    if needs & {"features", "logits", "real_stats", "real_features"}:
        feats = load_extractor(ecfg.extractor, weights=ecfg.inception_weights, device=device)
    oracle = None
    if "glyphs" in needs:
        if cfg is not None and (cfg.data.shards or cfg.data.builtin != "shapestack") and not data:
            print("ganforge: warning: coverage assumes shapestack images; this run's data may not be")
        from pipeline.data.datasets.shapestack import oracle
    ref = None
    if needs & {"real_stats", "real_features"}:
        urls, counts, sha, source, res = _real_data(data, cfg)
        batches = reference.shard_batches(urls, res, batch_size=ecfg.batch_size, stop=ecfg.n_real, counts=counts)
        ref = reference.reference_stats(batches, feats, manifest_sha=sha, resolution=res, source=source,
                                        limit=ecfg.n_real, keep=metrics.real_keep(names))
    results, _ = collect.evaluate(G, names, extractor=feats, ref=ref, cfg=ecfg, oracle=oracle)
    proto = Protocol.of(feats, ref, n_fake=ecfg.n_fake, truncation=ecfg.truncation, ema=ecfg.ema, seed=ecfg.seed)
    keys = {**metrics.metric_keys(results, proto.extractor, proto.standard), **rec}
    width = max(map(len, keys), default=0)
    for k, v in keys.items():
        print(f"{k:<{width}}  {v:.6g}")
    for k, v in proto.tags().items():
        print(f"  {k} = {v}")
    if feats is not None and not feats.standard:
        print(f"  (features from {feats.name}: not comparable with standard Inception FIDs)")
    if log:
        if run_id is None:
            raise ValueError("--log needs a RUN_ID or models:/ target (it logs into that run)")
        from mlflow.tracking import MlflowClient

        from pipeline.evaluation.metrics.protocol import log_scores
        from pipeline.tracking.runs import tracking_uri
        client = MlflowClient(tracking_uri())
        log_scores(client, run_id, results, proto, step=step, ref_path=ref.path if ref else None)
        for k, v in rec.items():
            client.log_metric(run_id, f"eval/{k}", v, step=step)
        print(f"logged to MLflow run {run_id}")
        if version is not None:   # registered versions carry their scores and protocol as tags
            for k, v in {**proto.tags(), **{k: f"{v:.6g}" for k, v in keys.items()}}.items():
                client.set_model_version_tag(version[0], version[1], k, v)
            print(f"tagged registered model {version[0]} version {version[1]}")
    return 0


COMMANDS = [fit_extractor, evaluate]
