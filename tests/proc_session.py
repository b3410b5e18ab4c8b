"""Start a command in its own session and stop exactly that session's processes (by PID, never
`ray stop`, which would stop every Ray of this user: other sessions' and the pytest fixture's)."""
from __future__ import annotations

import os
import signal
import subprocess
import time


def session_pids(sid: int) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is the state, fields[3] the session id; zombies are already dead.
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(d))
    return pids


def stop_session(proc: subprocess.Popen, grace_s: float = 20.0) -> list[int]:
    """SIGTERM the session leader's group, wait, then SIGKILL whatever of the session is left
    (Ray workers get their own process groups, but stay in the session). -> PIDs still alive."""
    sid = proc.pid
    try:
        os.killpg(sid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while (left := session_pids(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def in_a_terminal(argv: list[str], cwd, timeout_s: float = 400) -> tuple[int, str]:
    """Run `argv` on a pseudo-terminal of 120 x 40 (as a person would), in its own session;
    -> (exit code, everything it drew). A run past the timeout is stopped and fails the test."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import subprocess
    import termios
    import time


    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, cwd=cwd,
                            start_new_session=True, close_fds=True)
    os.close(follower)
    out, deadline = b"", time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:          # the terminal closed: every writer has exited
                break
            if not chunk:
                break
            out += chunk
        else:
            stop_session(proc)
            raise AssertionError(f"{argv[:4]} ran past {timeout_s} s; it drew:\n{out.decode(errors='replace')[-3000:]}")
        return proc.wait(timeout=60), out.decode(errors="replace")
    finally:
        os.close(leader)
