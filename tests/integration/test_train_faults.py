"""Failures during training: a killed worker and a killed driver lose at most one epoch.

- A training worker process is killed (SIGKILL, by its pid) once Ray has registered a
  checkpoint and before the last epoch ends; Ray Train restarts the worker group
  (`train.max_failures`), the loop restores the last checkpoint, and the history holds every
  epoch exactly once.
- The driver (`sdpose train`) is killed the same way; `sdpose train --resume` continues the
  run under its stable name from the checkpoint Ray had recorded, and finishes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from sdpose.config import dump_params
from sdpose.training.history import read_history_csv
from sdpose.training.launcher import RUN_NAME
from sdpose.training.stage import run
from sdpose.training.storage import RunStorage

pytestmark = pytest.mark.integration

SDPOSE = Path(sys.executable).with_name("sdpose")


def _checkpoint(workdir: Path, epoch: int) -> Path:
    return workdir / "models" / "ray" / RUN_NAME / f"epoch-{epoch:04d}"


def _wait_for_checkpoint(workdir: Path, epoch: int, timeout: float) -> None:
    """Until Ray has registered the epoch's checkpoint (what a restart would restore)."""
    run = RunStorage.of(Path("models/ray"), RUN_NAME, workdir)
    deadline = time.monotonic() + timeout
    while (latest := run.latest_checkpoint()) is None or latest[0] < epoch:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run}: no checkpoint of epoch {epoch} after {timeout:.0f}s")
        time.sleep(0.5)


def _train_worker_pids(root_pid: int) -> list[int]:
    """Ray Train worker processes below `root_pid` (the local Ray this process started)."""
    found = []
    for child in psutil.Process(root_pid).children(recursive=True):
        try:
            if child.cmdline()[:1] and child.cmdline()[0].startswith("ray::RayTrainWorker"):
                found.append(child.pid)
        except psutil.Error:  # gone or unreadable: not ours to kill anyway
            continue
    return found


EPOCHS = 4  # room for the kill to land before the last epoch, however fast epochs run


def _registered_epoch(workdir: Path) -> int:
    """The last epoch Ray has registered a checkpoint of (-1: none)."""
    latest = RunStorage.of(Path("models/ray"), RUN_NAME, workdir).latest_checkpoint()
    return latest[0] if latest else -1


@pytest.mark.timeout(900)
def test_killed_worker_restores_last_checkpoint(train_workdir, tiny_params) -> None:
    params = tiny_params(train_workdir, {"train.epochs": EPOCHS})
    killed: dict[str, object] = {}

    def kill_a_worker_after_the_first_checkpoint() -> None:
        try:
            _wait_for_checkpoint(train_workdir, 0, timeout=600)
            pids = _train_worker_pids(os.getpid())
            killed["before_the_end"] = not _checkpoint(train_workdir, EPOCHS - 1).exists()
            killed["pid"] = pids[-1]
            os.kill(pids[-1], signal.SIGKILL)
        except Exception as error:  # reported by the assertions below
            killed["error"] = error

    killer = threading.Thread(target=kill_a_worker_after_the_first_checkpoint, daemon=True)
    killer.start()
    summary = run(params, train_workdir)
    killer.join(timeout=5)

    assert "error" not in killed, killed.get("error")
    assert killed["before_the_end"]
    assert not psutil.pid_exists(killed["pid"]) or psutil.Process(killed["pid"]).status() == (
        psutil.STATUS_ZOMBIE
    )
    history = read_history_csv(train_workdir / "metrics" / "train_history.csv")
    assert [row["epoch"] for row in history] == list(range(EPOCHS))  # each epoch exactly once
    assert summary["restores"] == 1  # the interrupted epoch ran again from a checkpoint
    assert summary["epochs"] == EPOCHS


def _sdpose_train(workdir: Path, log: str, *options: str, **popen) -> subprocess.Popen:
    """`sdpose train` in `workdir` (reading the params.yaml there), output to `log`."""
    command = [str(SDPOSE), "train", *options]
    with (workdir / log).open("w") as out:  # the child keeps its own descriptor
        return subprocess.Popen(command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, **popen)


def _kill_session(process: subprocess.Popen) -> None:
    """SIGKILL the driver and the local Ray it started (its own session and group), and
    wait until every one of its processes is gone: until then a Train controller that has
    not died yet may still register a checkpoint, and Ray's record would move after it was
    read (seen once on CI: the record read 0, the resume found 1)."""
    try:
        below = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        below = []
    with contextlib.suppress(ProcessLookupError):  # start_new_session: group id == its pid
        os.killpg(process.pid, signal.SIGKILL)
    for child in below:  # any that left the group
        with contextlib.suppress(psutil.Error):
            child.kill()
    process.wait(timeout=30)
    _, alive = psutil.wait_procs(below, timeout=30)
    assert not alive, f"still running after SIGKILL: {alive}"


@pytest.mark.timeout(900)
def test_killed_driver_then_resume_finishes_the_run(train_workdir, tiny_params) -> None:
    params = tiny_params(train_workdir, {"train.epochs": EPOCHS})
    (train_workdir / "params.yaml").write_text(dump_params(params))

    driver = _sdpose_train(train_workdir, "first.log", start_new_session=True)
    try:
        _wait_for_checkpoint(train_workdir, 0, timeout=600)
        assert driver.poll() is None, "the run ended before the driver could be killed"
    finally:
        _kill_session(driver)
    assert not (train_workdir / "metrics" / "train.json").exists()  # it never finished
    restart_after = _registered_epoch(train_workdir)  # what Ray had recorded when it died
    assert 0 <= restart_after < EPOCHS - 1, "the kill came too late to test resuming"

    resumed = _sdpose_train(train_workdir, "resume.log", "--resume")
    assert resumed.wait(timeout=600) == 0, (train_workdir / "resume.log").read_text()[-3000:]
    summary = json.loads((train_workdir / "metrics" / "train.json").read_text())
    history = read_history_csv(train_workdir / "metrics" / "train_history.csv")
    assert [row["epoch"] for row in history] == list(range(EPOCHS))  # each epoch exactly once
    assert summary["resumed_after_epoch"] == restart_after
    assert summary["restores"] == 1  # the resumed run started from that checkpoint
