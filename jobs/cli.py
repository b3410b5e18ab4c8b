"""`ganforge` command line: parse, validate, --dry-run, launch. Heavy imports happen per command."""
from __future__ import annotations

import argparse
import sys

from pipeline import config as C


def _load(args) -> C.Config:
    # --address is a shorthand for the scaling.address override (new settings live in config).
    extra = [f"scaling.address={args.address}"] if getattr(args, "address", None) else []
    return C.load(args.config, [*args.overrides, *extra])


def cmd_train(args) -> int:
    cfg = _load(args)
    if args.dry_run:
        print(C.dump_yaml(cfg), end="")
        return 0
    if args.local:
        from jobs.train import run_local
        run_local(cfg, args.local, device=args.device, resume_from=args.resume_from)
        return 0
    from jobs.train import run_training
    s = run_training(cfg, resume_from=args.resume_from)
    _print_summary(s)
    return 0


def cmd_quickstart(args) -> int:
    args.config = "quickstart"
    args.resume_from = args.local = None
    return cmd_train(args)


def cmd_shards(args) -> int:
    from pipeline.data import datasets

    if args.from_folder:
        from pipeline.data.convert import convert_folder

        manifest = convert_folder(args.from_folder, args.out, resolution=args.resolution, seed=args.seed,
                                  fmt=args.format, shard_size=args.shard_size, workers=args.workers,
                                  strict=args.strict, unlabelled=args.unlabelled)
    else:
        manifest = datasets.build_builtin(args.builtin, args.out, resolution=args.resolution,
                                          n=args.n, shard_size=args.shard_size, seed=args.seed,
                                          fmt=args.format)
    classes = f"{manifest['num_classes']} classes" if manifest["num_classes"] else "unlabelled"
    rejected = f", {manifest['rejected']} files rejected" if manifest.get("rejected") else ""
    print(f"wrote {manifest['samples']} samples in {len(manifest['shards'])} shards to {args.out} "
          f"({classes}, {manifest['resolution']} px, {manifest['format']}{rejected})")
    return 0


def _print_summary(s) -> None:
    from mlflow.tracking import MlflowClient

    art = MlflowClient(s.tracking_uri).get_run(s.mlflow_run_id).info.artifact_uri
    grid = f"{art}/{s.last_grid}" if s.last_grid else "(none)"
    print(f"\nrun {s.run_name}: {s.steps} steps in {s.seconds:.0f} s")
    print(f"  MLflow run id : {s.mlflow_run_id}")
    print(f"  sample grid   : {grid.removeprefix('file://')}")
    print(f"  checkpoint    : {s.checkpoint}")
    if s.model_uri:
        print(f"  registered    : {s.model_uri}   (ganforge sample {s.model_uri} --n 16 --out grid.png)")
    print(f"  resolved cfg  : {s.run_dir.rstrip('/')}/resolved_config.yaml")
    ui = s.tracking_uri if s.tracking_uri.startswith(("sqlite", "postgres", "mysql")) else None
    if ui:
        print(f"  browse        : mlflow ui --backend-store-uri {ui}   (then open http://127.0.0.1:5000)")
    else:
        print(f"  browse        : {s.tracking_uri}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ganforge", description="Distributed GAN training on Ray.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train from a YAML preset or file plus key=value overrides")
    t.add_argument("config", help="preset name (see jobs/configs) or path to a YAML file")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=200 loss.kind=hinge")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    t.add_argument("--resume-from", help="start from this checkpoint folder (weights, optimizers, step)")
    t.add_argument("--local", metavar="DIR", help="run the engine in this process, without Ray or MLflow: "
                                                   "metrics.jsonl, grids and checkpoints in DIR (rerun = resume)")
    t.add_argument("--device", default="cpu", help="torch device for --local, e.g. cuda")
    t.set_defaults(func=cmd_train)

    q = sub.add_parser("quickstart", help="build shapestack shards if missing and train the small preset")
    q.add_argument("overrides", nargs="*")
    q.add_argument("--dry-run", action="store_true")
    q.add_argument("--address")
    q.set_defaults(func=cmd_quickstart)

    s = sub.add_parser("shards", help="write WebDataset shards from an image folder or a built-in set")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-folder", metavar="DIR",
                     help="image folder: DIR/<class>/.../img.png (class = first-level folder) or images "
                          "directly in DIR (unlabelled); unreadable files are skipped and listed in "
                          "OUT/rejected.txt")
    src.add_argument("--builtin", choices=["shapestack", "digits"])
    s.add_argument("--out", required=True)
    s.add_argument("--resolution", type=int, default=32)
    s.add_argument("--n", type=int, default=10000, help="samples (shapestack only)")
    s.add_argument("--shard-size", type=int, default=1000)
    s.add_argument("--format", choices=["png", "jpg"], default="png")
    s.add_argument("--seed", type=int, default=0,
                   help="--from-folder: the seeded order samples are written in; --builtin: generation")
    s.add_argument("--workers", type=int, default=None,
                   help="--from-folder: processes that decode, resize and encode (default: the cores); "
                        "the output is the same for any number")
    s.add_argument("--strict", action="store_true",
                   help="--from-folder: stop at the first unreadable file instead of skipping it")
    s.add_argument("--unlabelled", action="store_true",
                   help="--from-folder: every image at any depth, without classes")
    s.set_defaults(func=cmd_shards)

    from jobs import eval_cli, jobs_cli, registry_cli, tune_cli
    registry_cli.add_commands(sub)
    eval_cli.add_commands(sub)
    tune_cli.add_commands(sub)
    jobs_cli.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except C.ConfigError as e:
        print(f"ganforge: config error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # DataError, CheckpointError and friends: one line that names the thing.
        print(f"ganforge: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
