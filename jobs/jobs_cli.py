"""`ganforge submit` and `ganforge jobs list|status|logs|stop`: Ray Jobs from the command line
(COMMANDS, added to the group in jobs/cli.py)."""
from __future__ import annotations

import asyncio
import time

import click

from jobs.cli import overrides_argument, verbose_option
from pipeline import config as C

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@click.command("submit", short_help="run `ganforge train CONFIG` as a Ray Job on a cluster")
@click.argument("config")
@overrides_argument
@click.option("--address", help="the cluster's dashboard, http://HOST:8265 (through a tunnel); "
              "default $RAY_API_SERVER_ADDRESS")
@click.option("--no-wait", is_flag=True, help="print the job id and return")
@click.option("--follow", is_flag=True, help="stream the logs until the job ends (default)")
@verbose_option
def submit_cmd(config, overrides, address, no_wait, follow, verbose) -> int:
    """Run `ganforge train CONFIG` as a Ray Job on a cluster.

    CONFIG is a preset name or YAML file, resolved and validated here; KEY=VALUE are dotted
    overrides, e.g. train.steps=20000, before or after the options. --verbose is passed on to
    the job's `ganforge train`.
    """
    from jobs import submit as S

    if no_wait and follow:
        raise click.UsageError("--no-wait and --follow exclude each other")
    # Validate before anything touches the network. --address here is the Jobs API of the
    # cluster, not scaling.address: the job's driver joins its own cluster through RAY_ADDRESS.
    cfg = C.load(config, list(overrides))
    client, job_id = S.submit(cfg, address, verbose=verbose)
    print(f"submitted job {job_id}", flush=True)
    for note in S.notes(cfg):
        print(f"  note: {note}", flush=True)
    if no_wait:
        print(f"  follow: ganforge jobs logs {job_id} --follow --address {client.get_address()}")
        return 0
    return _follow(client, job_id)


def _follow(client, job_id: str) -> int:
    async def tail():
        async for chunk in client.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    asyncio.run(tail())
    status = _wait(client, job_id)
    print(f"job {job_id}: {status}", flush=True)
    return 0 if status == "SUCCEEDED" else 1


def _wait(client, job_id: str, timeout_s: float = 60.0) -> str:
    # The log stream closes as the driver exits; the status turns terminal a moment later.
    deadline = time.monotonic() + timeout_s
    while (status := str(client.get_job_status(job_id).value)) not in TERMINAL:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return status


@click.command("jobs", short_help="list Ray Jobs, or show the status, logs of one, or stop it")
@click.argument("action", type=click.Choice(["list", "status", "logs", "stop"]))
@click.argument("job_id", required=False)
@click.option("--address", help="http://HOST:8265; default $RAY_API_SERVER_ADDRESS")
@click.option("--follow", is_flag=True, help="logs: stream until the job ends")
def jobs_cmd(action, job_id, address, follow) -> int:
    """List Ray Jobs, or show the status, logs of one JOB_ID, or stop it."""
    from jobs.submit import connect

    if action != "list" and not job_id:
        raise click.UsageError(f"{action} needs a JOB_ID (from `ganforge jobs list`)")
    client = connect(address)
    if action == "list":
        for j in sorted(client.list_jobs(), key=lambda j: j.start_time or 0):
            print(f"{j.submission_id or j.job_id}  {j.status.value:9s}  {j.entrypoint}")
        return 0
    try:
        if action == "status":
            info = client.get_job_info(job_id)
            print(f"{job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
            return 0
        if action == "logs":
            if follow:
                return _follow(client, job_id)
            print(client.get_job_logs(job_id), end="")
            return 0
        stopped = client.stop_job(job_id)
        print(f"{job_id}: {'stop requested' if stopped else 'already finished'}")
        return 0
    except RuntimeError as e:
        # Ray answers an unknown id with an HTTP 404 wrapped in RuntimeError.
        if "404" in str(e) or "does not exist" in str(e):
            raise RuntimeError(f"no job {job_id!r} on {client.get_address()}") from None
        raise


COMMANDS = [submit_cmd, jobs_cmd]
