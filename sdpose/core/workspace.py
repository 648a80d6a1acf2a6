"""One run at a time in a workspace: a lock that names its holder and knows when it is stale.

A workspace run (`sdpose pipeline` without overrides, the served deployment's runs, a
stage command) writes the workspace's outputs and DVC's lock; two of them at once would
fail on DVC's lock after their services started, or overwrite each other. So a run first
takes `.sdpose/workspace.lock` (its pid, the process's start time, the command, when): a
second run finds it at once, before any service starts, and either waits its turn (a
bounded, stated wait) or stops with one line naming the holder and how to run beside it.
A lock whose process is gone (a killed run), or whose pid now belongs to another process,
is stale: it is cleared with a message. Processes a run starts (DVC's stage commands)
inherit the holder's pid in SDPOSE_WORKSPACE_HOLDER and pass through.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

LOCK_FILE = Path(".sdpose") / "workspace.lock"
HOLDER_ENV = "SDPOSE_WORKSPACE_HOLDER"
POLL_S = 2.0


class WorkspaceBusyError(RuntimeError):
    """Another live run holds the workspace; the message names it and the way around it."""


@dataclass(frozen=True)
class Holder:
    """Who holds the workspace: enough to tell a live run from a reused pid."""

    pid: int
    create_time: float
    command: str
    started: str
    host: str

    def describe(self) -> str:
        return f"pid {self.pid} (`{self.command}`, started {self.started})"

    def alive(self) -> bool:
        """The same process still runs: the pid exists and started when the lock says."""
        try:
            return abs(psutil.Process(self.pid).create_time() - self.create_time) < 1.0
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            return False


def read_holder(workdir: Path) -> Holder | None:
    """The lock's holder as written, alive or not; None without a (readable) lock."""
    try:
        return Holder(**json.loads((Path(workdir) / LOCK_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


@contextmanager
def hold_workspace(
    workdir: Path, command: str, wait_s: float = 0.0, say: Callable[[str], None] = print
) -> Iterator[Holder]:
    """Hold the workspace for the block; WorkspaceBusyError if a live run holds it longer
    than `wait_s`. Re-entrant within a run (the holder itself, or a process it started)."""
    path = Path(workdir).resolve() / LOCK_FILE
    current = read_holder(workdir)
    inherited = os.environ.get(HOLDER_ENV)
    if (
        current is not None
        and current.alive()
        and str(current.pid) in (str(os.getpid()), inherited)
    ):
        yield current
        return
    me = _acquire(path, command, wait_s, say)
    previous = os.environ.get(HOLDER_ENV)
    os.environ[HOLDER_ENV] = str(me.pid)
    try:
        yield me
    finally:
        if previous is None:
            os.environ.pop(HOLDER_ENV, None)
        else:
            os.environ[HOLDER_ENV] = previous
        if read_holder(workdir) == me:
            path.unlink(missing_ok=True)


def _acquire(path: Path, command: str, wait_s: float, say: Callable[[str], None]) -> Holder:
    """Write the lock for this process once nobody live holds it."""
    me = Holder(
        pid=os.getpid(),
        create_time=psutil.Process().create_time(),
        command=command,
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
        host=socket.gethostname(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline, waiting_said = time.monotonic() + wait_s, False
    while True:
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_holder(path.parent.parent)
            if holder is None or not holder.alive():
                what = holder.describe() if holder else "an unreadable lock"
                say(f"{path}: cleared a stale lock of {what}, which is no longer running")
                path.unlink(missing_ok=True)
                continue
            if time.monotonic() >= deadline:
                raise WorkspaceBusyError(busy_message(path, holder, waited=wait_s)) from None
            if not waiting_said:
                say(f"the workspace is busy: {holder.describe()} holds it; waiting up to "
                    f"{wait_s:.0f} s for it to finish")  # fmt: skip
                waiting_said = True
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
            continue
        with os.fdopen(handle, "w") as lock:
            json.dump(asdict(me), lock)
        return me


def busy_message(path: Path, holder: Holder, waited: float = 0.0) -> str:
    """One line: who holds the workspace and how to run beside it."""
    after = f" (still, after waiting {waited:.0f} s)" if waited else ""
    return (
        f"the workspace is busy{after}: {holder.describe()} holds {path}. Wait for it "
        "(--wait SECONDS), or run beside it as an isolated experiment: any override does "
        "that, e.g. `sdpose pipeline --set train.seed=1`"
    )
