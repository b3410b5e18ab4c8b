"""`ganforge register|promote|models|pull|sample`: the model registry from the command line.

Every handler returns an exit code; a failure is one line on stderr that names the thing and
what to do, and exit status 1. Heavy imports happen inside the handlers.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _cli_env() -> None:
    # MLflow retries a dead server for minutes by default; a person at a terminal wants a line.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Keep stderr for the one-line error: no download progress bars, no INFO chatter.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def _run(fn):
    """Wrap a handler: expected errors become one stderr line and exit status 1."""
    def handler(args) -> int:
        _cli_env()                     # before the first mlflow import
        from mlflow.exceptions import MlflowException

        from pipeline.engine.checkpoint import CheckpointError
        from pipeline.config import ConfigError
        from pipeline.families.generator import GeneratorError

        try:
            return fn(args)
        except (GeneratorError, CheckpointError, ConfigError, ValueError, OSError) as e:
            msg = str(e)
        except MlflowException as e:   # anything the registry layer did not translate
            msg = f"MLflow: {str(e).splitlines()[0][:300]}"
        print(f"ganforge {getattr(args, 'command', '')}: {msg}".replace("  ", " "), file=sys.stderr)
        return 1
    return handler


@_run
def cmd_register(args) -> int:
    from pipeline.tracking import registry

    mv = registry.register_run(args.run_id, name=args.name, alias=args.alias)
    alias = f" @{args.alias}" if args.alias else ""
    print(f"registered {mv.name} version {mv.version}{alias} from run {args.run_id}")
    print(f"  handle: models:/{mv.name}/{mv.version}" + (f"  or  models:/{mv.name}@{args.alias}" if alias else ""))
    return 0


@_run
def cmd_promote(args) -> int:
    from pipeline.tracking import registry

    if args.remove:
        registry.remove_alias(args.name, args.alias)
        print(f"removed alias {args.alias} from {args.name}")
        return 0
    if args.version is None:
        raise ValueError(f"promote {args.name}: give the VERSION to point @{args.alias} at "
                         "(or --remove to delete the alias)")
    registry.promote(args.name, args.version, args.alias)
    print(f"models:/{args.name}@{args.alias} -> version {args.version}")
    return 0


@_run
def cmd_models(args) -> int:
    from pipeline.tracking import registry

    rows = registry.list_versions(args.name)
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


@_run
def cmd_pull(args) -> int:
    from pipeline.tracking import registry

    out = registry.pull(args.uri, args.out)
    print(f"pulled {args.uri} into {out} (weights.pt, config.yaml, ganforge_model.json, MODEL_CARD.md)")
    return 0


@_run
def cmd_sample(args) -> int:
    from pipeline.tracking import registry
    from pipeline.families import sampling

    G = registry.load_generator(args.source, device=args.device)
    fixed = {"cls": args.cls}
    for kv in args.code or []:
        k, sep, v = kv.partition("=")
        if not sep:
            raise ValueError(f"--code {kv!r}: expected NAME=VALUE, e.g. cat0=3 or cont0=0.5")
        try:
            fixed[k.strip()] = int(v) if v.strip().lstrip("-").isdigit() else float(v)
        except ValueError:
            raise ValueError(f"--code {kv!r}: {v!r} is not a number") from None
    if args.cls is not None and not G.num_classes:
        raise ValueError(f"--class: {args.cls} given but the generator is unconditional (drop --class)")
    images = G.sample(args.n, args.seed, truncation=args.truncation, fixed=fixed)
    files = sampling.write_grid(images, args.out, individual=args.individual)
    extra = f" and {len(files) - 1} images in {Path(args.out).with_suffix('')}/" if args.individual else ""
    print(f"wrote {args.n} samples (seed {args.seed}) to {args.out}{extra}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add register, promote, models, pull and sample to the `ganforge` subparsers."""
    r = sub.add_parser("register", help="register a finished run's EMA generator in the MLflow model registry")
    r.add_argument("run_id", help="MLflow run id (printed at the end of training)")
    r.add_argument("--name", help="registered model name (default: ganforge-FAMILY)")
    r.add_argument("--alias", help="also point this alias (e.g. champion) at the new version")
    r.set_defaults(func=cmd_register)

    p = sub.add_parser("promote", help="point an alias (e.g. champion) at a version, or --remove it")
    p.add_argument("name")
    p.add_argument("version", nargs="?", help="version number (not needed with --remove)")
    p.add_argument("--alias", required=True)
    p.add_argument("--remove", action="store_true", help="delete the alias instead")
    p.set_defaults(func=cmd_promote)

    m = sub.add_parser("models", help="list registered generators: versions, aliases, metrics")
    m.add_argument("name", nargs="?")
    m.set_defaults(func=cmd_models)

    u = sub.add_parser("pull", help="download a generator (weights, config, model card) into a folder")
    u.add_argument("uri", help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/generator")
    u.add_argument("--out", required=True, help="folder to create (must not exist)")
    u.set_defaults(func=cmd_pull)

    s = sub.add_parser("sample", help="write a PNG grid from a registered or pulled generator")
    s.add_argument("source", help="models:/NAME@ALIAS (or /VERSION), runs:/..., a folder from `ganforge pull` "
                                  "or a training checkpoint folder")
    s.add_argument("--n", type=int, default=64, help="number of images")
    s.add_argument("--class", dest="cls", type=int, help="class label (conditional models; default cycles 0..C-1)")
    s.add_argument("--truncation", type=float, help="resample |z| above this (BigGAN trick), e.g. 0.7")
    s.add_argument("--code", action="append", metavar="NAME=VALUE",
                   help="fix one latent code for every image (InfoGAN: cat0=3, cont0=0.5); repeatable")
    s.add_argument("--seed", type=int, default=0, help="same seed, same images")
    s.add_argument("--out", required=True, help="grid PNG path")
    s.add_argument("--individual", action="store_true", help="also one PNG per image in a folder beside it")
    s.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    s.set_defaults(func=cmd_sample)


def main(argv: list[str] | None = None) -> int:
    """These commands alone (`python -m jobs.registry_cli ...`); `ganforge` adds them to its own."""
    parser = argparse.ArgumentParser(prog="ganforge", description="ganforge model registry commands")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
