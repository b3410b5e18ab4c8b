"""`ganforge` command line: one click group, one error policy. Heavy imports happen per command.

The commands live beside what they drive (train, quickstart and shards here; the registry, eval,
tune and Ray Jobs commands in jobs/*_cli.py, each listing its own in COMMANDS) and join the group
on first use. main() turns every expected failure into one stderr line and an exit code:

    0  success
    2  usage errors (unknown option, missing argument, bad choice) and config errors
    1  runtime failures: data, checkpoints, generators, training, MLflow, files, other ValueErrors
  130  interrupted (Ctrl-C)

Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import importlib
import sys

import click

from pipeline import config as C

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_MODULES = ("jobs.registry_cli", "jobs.eval_cli", "jobs.tune_cli", "jobs.jobs_cli")

# Shared by train, quickstart, tune and submit. `k=v` overrides may sit anywhere on the line: click
# collects every positional that does not start with '-' into OVERRIDES, before or after options.
overrides_argument = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
verbose_option = click.option("--verbose", "-v", is_flag=True,
                              help="show Ray's own log lines (worker prefixes, per-report INFO) as well")
dry_run_option = click.option("--dry-run", is_flag=True, help="print the resolved config and exit")


class _Group(click.Group):
    """Adds the per-module commands on first use (those modules import this one for the shared
    options above) and lists commands in the order they were added, not alphabetically."""

    _loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for name in _MODULES:
                for cmd in importlib.import_module(name).COMMANDS:
                    self.add_command(cmd)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load()
        return list(self.commands)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load()
        return super().get_command(ctx, cmd_name)


@click.group("ganforge", cls=_Group, context_settings=CONTEXT)
def ganforge() -> None:
    """Distributed GAN training on Ray."""


def _train(config: str, overrides: tuple[str, ...], *, dry_run: bool, address: str | None,
           resume_from: str | None = None, local: str | None = None, device: str = "cpu",
           verbose: bool = False) -> int:
    # --address is a shorthand for the scaling.address override (new settings live in config).
    cfg = C.load(config, [*overrides, *([f"scaling.address={address}"] if address else [])])
    if dry_run:
        print(C.dump_yaml(cfg), end="")
        return 0
    if local:
        from jobs.train import run_local
        run_local(cfg, local, device=device, resume_from=resume_from)
        return 0
    from jobs.train import run_training
    _print_summary(run_training(cfg, resume_from=resume_from, verbose=verbose))
    return 0


@ganforge.command(short_help="train from a YAML preset or file plus key=value overrides")
@click.argument("config")
@overrides_argument
@dry_run_option
@click.option("--address", help="join this Ray cluster instead of starting a local one")
@click.option("--resume-from", help="start from this checkpoint folder (weights, optimizers, step)")
@click.option("--local", metavar="DIR", help="run the engine in this process, without Ray or MLflow: "
              "metrics.jsonl, grids and checkpoints in DIR (rerun = resume)")
@click.option("--device", default="cpu", help="torch device for --local, e.g. cuda")
@verbose_option
def train(config, overrides, dry_run, address, resume_from, local, device, verbose) -> int:
    """Train from a YAML preset or file plus key=value overrides.

    CONFIG is a preset name (see jobs/configs) or the path to a YAML file; KEY=VALUE are dotted
    overrides, e.g. train.steps=200 loss.kind=hinge, before or after the options.
    """
    return _train(config, overrides, dry_run=dry_run, address=address, resume_from=resume_from,
                  local=local, device=device, verbose=verbose)


@ganforge.command(short_help="build shapestack shards if missing and train the small preset")
@overrides_argument
@dry_run_option
@click.option("--address", help="join this Ray cluster instead of starting a local one")
@verbose_option
def quickstart(overrides, dry_run, address, verbose) -> int:
    """Build shapestack shards if missing and train the small preset (`train quickstart`).

    KEY=VALUE are dotted overrides, e.g. train.steps=500.
    """
    return _train("quickstart", overrides, dry_run=dry_run, address=address, verbose=verbose)


@ganforge.command(short_help="write WebDataset shards from an image folder or built-in set")
@click.option("--from-folder", metavar="DIR",
              help="image folder: DIR/<class>/.../img.png (class = first-level folder) or images "
                   "directly in DIR (unlabelled); unreadable files are skipped and listed in "
                   "OUT/rejected.txt")
@click.option("--pairs", nargs=2, metavar="SOURCE_DIR TARGET_DIR",
              help="paired data (pix2pix): one sample per file name found in both folders (source.png "
                   "+ target.png); files without a partner are listed in OUT/rejected.txt")
@click.option("--builtin", type=click.Choice(C.BUILTIN_NAMES))
@click.option("--out", required=True)
@click.option("--resolution", type=int, default=32)
@click.option("--n", type=int, default=10000, help="samples (--builtin; digits has 1797)")
@click.option("--shard-size", type=int, default=1000)
@click.option("--format", "fmt", type=click.Choice(["png", "jpg"]), default="png")
@click.option("--seed", type=int, default=0,
              help="--from-folder: the seeded order samples are written in; --builtin: generation")
@click.option("--workers", type=int, default=None,
              help="--from-folder: processes that decode, resize and encode (default: the cores); "
                   "the output is the same for any number")
@click.option("--strict", is_flag=True,
              help="--from-folder: stop at the first unreadable file instead of skipping it")
@click.option("--unlabelled", is_flag=True, help="--from-folder: every image at any depth, without classes")
def shards(from_folder, pairs, builtin, out, resolution, n, shard_size, fmt, seed, workers, strict,
           unlabelled) -> int:
    """Write WebDataset shards from an image folder (--from-folder), two folders of pairs (--pairs)
    or a built-in set (--builtin).

    Unpaired and multi-domain data (CycleGAN, StarGAN) is one folder per domain: --from-folder DIR
    with DIR/<domain>/... gives every image its domain as cls."""
    if sum(map(bool, (from_folder, pairs, builtin))) != 1:
        raise click.UsageError("give exactly one of --from-folder DIR, --pairs SOURCE_DIR TARGET_DIR "
                               "or --builtin NAME")
    if pairs:
        from pipeline.data.convert import convert_pairs

        manifest = convert_pairs(*pairs, out, resolution=resolution, seed=seed, fmt=fmt,
                                 shard_size=shard_size, workers=workers, strict=strict)
    elif from_folder:
        from pipeline.data.convert import convert_folder

        manifest = convert_folder(from_folder, out, resolution=resolution, seed=seed, fmt=fmt,
                                  shard_size=shard_size, workers=workers, strict=strict,
                                  unlabelled=unlabelled)
    else:
        from pipeline.data import datasets

        manifest = datasets.build_builtin(builtin, out, resolution=resolution, n=n,
                                          shard_size=shard_size, seed=seed, fmt=fmt)
    classes = f"{manifest['num_classes']} classes" if manifest["num_classes"] else (
        "pairs" if pairs else "unlabelled")
    rejected = f", {manifest['rejected']} files rejected" if manifest.get("rejected") else ""
    print(f"wrote {manifest['samples']} samples in {len(manifest['shards'])} shards to {out} "
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
        use = (f"ganforge translate {s.model_uri} --input IMG_OR_DIR --out DIR" if s.translates
               else f"ganforge sample {s.model_uri} --n 16 --out grid.png")
        print(f"  registered    : {s.model_uri}   ({use})")
    print(f"  resolved cfg  : {s.run_dir.rstrip('/')}/resolved_config.yaml")
    ui = s.tracking_uri if s.tracking_uri.startswith(("sqlite", "postgres", "mysql")) else None
    if ui:
        print(f"  browse        : mlflow ui --backend-store-uri {ui}   (then open http://127.0.0.1:5000)")
    else:
        print(f"  browse        : {s.tracking_uri}")


# --- the one error policy ------------------------------------------------------------------------

def _mlflow_error(e: BaseException) -> bool:
    # Only an imported mlflow can have raised one: looking it up here costs no import.
    mod = sys.modules.get("mlflow.exceptions")
    return mod is not None and isinstance(e, mod.MlflowException)


def _fail(where: str, message: str, code: int) -> int:
    line = "; ".join(s.strip() for s in str(message).splitlines() if s.strip())
    print(f"{where}: {line}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """`ganforge ARGV` -> exit code (0 ok, 2 usage or config error, 1 runtime failure, 130 Ctrl-C);
    a failure is one line on stderr, `ganforge COMMAND: what went wrong`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # The group has no options of its own, so the first word that is not an option is the command.
    where = " ".join(["ganforge", *[a for a in argv if not a.startswith("-")][:1]])
    try:
        rc = ganforge.main(args=argv, prog_name="ganforge", standalone_mode=False)
        return 0 if rc is None else int(rc)
    except click.exceptions.NoArgsIsHelpError as e:      # bare `ganforge`: the help, as a usage error
        print(e.ctx.get_help(), file=sys.stderr)
        return 2
    except click.ClickException as e:                   # UsageError, BadParameter, NoSuchOption, ...
        ctx = getattr(e, "ctx", None)
        if ctx is None:
            return _fail(where, e.format_message(), e.exit_code)
        msg = e.format_message().rstrip()
        msg += "" if msg.endswith((".", "?", "!")) else "."
        return _fail(ctx.command_path, f"{msg} Try '{ctx.command_path} --help'.", e.exit_code)
    except click.Abort as e:                            # click's wrapping of Ctrl-C (and EOF on a prompt)
        return 130 if isinstance(e.__cause__, KeyboardInterrupt) else _fail(where, "aborted", 1)
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:                             # click exits on a broken stdout pipe
        return e.code if isinstance(e.code, int) else 1
    except C.ConfigError as e:                          # before ValueError: it is one
        return _fail(where, f"config error: {e}", 2)
    except (ValueError, OSError, RuntimeError) as e:    # DataError, CheckpointError, GeneratorError,
        return _fail(where, str(e) or type(e).__name__, 1)   # TrainingError, SubmitError, ...
    except Exception as e:
        if _mlflow_error(e):                            # anything the registry layer did not translate
            first = (str(e).splitlines() or [type(e).__name__])[0]
            return _fail(where, f"MLflow: {first[:300]}", 1)
        raise                                           # a bug: keep the traceback


if __name__ == "__main__":
    sys.exit(main())
