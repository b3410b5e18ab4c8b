"""`ganforge submit` and `ganforge jobs list|status|logs|stop`: Ray Jobs from the command line."""
from __future__ import annotations

import asyncio
import sys
import time

from pipeline import config as C

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def cmd_submit(args) -> int:
    from jobs import submit as S

    # Validate before anything touches the network. --address here is the Jobs API of the
    # cluster, not scaling.address: the job's driver joins its own cluster through RAY_ADDRESS.
    cfg = C.load(args.config, args.overrides)
    client, job_id = S.submit(cfg, args.address)
    print(f"submitted job {job_id}", flush=True)
    for note in S.notes(cfg):
        print(f"  note: {note}", flush=True)
    if args.no_wait:
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


def cmd_jobs(args) -> int:
    from jobs.submit import connect

    client = connect(args.address)
    if args.action == "list":
        for j in sorted(client.list_jobs(), key=lambda j: j.start_time or 0):
            print(f"{j.submission_id or j.job_id}  {j.status.value:9s}  {j.entrypoint}")
        return 0
    if not args.job_id:
        print(f"ganforge: jobs {args.action} needs a JOB_ID (see `ganforge jobs list`)", file=sys.stderr)
        return 2
    try:
        if args.action == "status":
            info = client.get_job_info(args.job_id)
            print(f"{args.job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
            return 0
        if args.action == "logs":
            if args.follow:
                return _follow(client, args.job_id)
            print(client.get_job_logs(args.job_id), end="")
            return 0
        stopped = client.stop_job(args.job_id)
        print(f"{args.job_id}: {'stop requested' if stopped else 'already finished'}")
        return 0
    except RuntimeError as e:
        # Ray answers an unknown id with an HTTP 404 wrapped in RuntimeError.
        if "404" in str(e) or "does not exist" in str(e):
            raise RuntimeError(f"no job {args.job_id!r} on {client.get_address()}") from None
        raise


def add_commands(sub) -> None:
    s = sub.add_parser("submit", help="run `ganforge train CONFIG` as a Ray Job on a cluster")
    s.add_argument("config", help="preset name or YAML file, resolved and validated here")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=20000")
    s.add_argument("--address", help="the cluster's dashboard, http://HOST:8265 (through a tunnel); "
                                     "default $RAY_API_SERVER_ADDRESS")
    w = s.add_mutually_exclusive_group()
    w.add_argument("--no-wait", action="store_true", help="print the job id and return")
    w.add_argument("--follow", action="store_true", help="stream the logs until the job ends (default)")
    s.set_defaults(func=cmd_submit)

    j = sub.add_parser("jobs", help="list Ray Jobs, or show the status, logs of one, or stop it")
    j.add_argument("action", choices=["list", "status", "logs", "stop"])
    j.add_argument("job_id", nargs="?")
    j.add_argument("--address", help="http://HOST:8265; default $RAY_API_SERVER_ADDRESS")
    j.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    j.set_defaults(func=cmd_jobs)
