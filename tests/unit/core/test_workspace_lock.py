"""One run at a time in a workspace: a second run is told at once who holds it, waits a
stated time if asked, and a killed run's lock is recognised as stale and cleared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from sdpose.core.workspace import (
    HOLDER_ENV,
    LOCK_FILE,
    WorkspaceBusyError,
    hold_workspace,
    read_holder,
)

pytestmark = pytest.mark.unit

HOLD = """
import sys, time
from pathlib import Path
from sdpose.core.workspace import hold_workspace
with hold_workspace(Path(sys.argv[1]), "sdpose pipeline"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def holder(tmp_path):
    """Start a process that holds tmp_path for `seconds`; it is stopped at the end."""
    started = []

    def hold(seconds: float) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(tmp_path), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if k != HOLDER_ENV},
        )
        assert process.stdout.readline().strip() == "held"
        started.append(process)
        return process

    yield hold
    for process in started:
        process.kill()
        process.wait()


def test_a_second_run_stops_at_once_naming_the_holder(tmp_path, holder):
    process = holder(60)
    began = time.monotonic()
    with pytest.raises(WorkspaceBusyError) as error, hold_workspace(tmp_path, "sdpose train"):
        pytest.fail("the workspace was taken twice")
    assert time.monotonic() - began < 5
    message = str(error.value)
    assert f"pid {process.pid}" in message and "`sdpose pipeline`" in message
    assert "--set train.seed=1" in message  # how to run beside it
    assert read_holder(tmp_path).pid == process.pid  # the holder's lock is untouched


def test_a_bounded_wait_takes_the_workspace_when_the_holder_ends(tmp_path, holder):
    holder(1.5)
    said: list[str] = []
    with hold_workspace(tmp_path, "sdpose pipeline", wait_s=30, say=said.append) as me:
        assert me.pid == os.getpid() and read_holder(tmp_path) == me
    assert any("waiting up to 30 s" in line for line in said)
    assert not (tmp_path / LOCK_FILE).exists()  # released


def test_a_wait_that_runs_out_says_it_waited(tmp_path, holder):
    holder(60)
    quiet = hold_workspace(tmp_path, "sdpose pipeline", wait_s=1, say=lambda line: None)
    with pytest.raises(WorkspaceBusyError, match="after waiting 1 s"), quiet:
        pass


def test_a_killed_runs_lock_is_cleared_with_a_message(tmp_path, holder):
    process = holder(60)
    process.kill()
    process.wait()
    assert (tmp_path / LOCK_FILE).exists()  # a kill leaves the lock behind
    said: list[str] = []
    with hold_workspace(tmp_path, "sdpose pipeline", say=said.append) as me:
        assert me.pid == os.getpid()
    assert any("stale lock" in line and f"pid {process.pid}" in line for line in said)


def test_a_reused_pid_is_not_taken_for_the_holder(tmp_path):
    lock = tmp_path / LOCK_FILE
    lock.parent.mkdir()
    stale = {"pid": os.getppid(), "create_time": 1.0, "command": "sdpose pipeline",
             "started": "2026-01-01 00:00:00", "host": "x"}  # fmt: skip
    lock.write_text(json.dumps(stale))
    said: list[str] = []
    with hold_workspace(tmp_path, "sdpose crops", say=said.append):
        pass
    assert said and "stale" in said[0]


def test_the_run_and_the_processes_it_starts_pass_through(tmp_path):
    with hold_workspace(tmp_path, "sdpose pipeline") as me:
        with hold_workspace(tmp_path, "sdpose train") as again:  # the same process
            assert again == me
        assert os.environ[HOLDER_ENV] == str(me.pid)  # what a stage command inherits
        child = subprocess.run(
            [sys.executable, "-c", HOLD, str(tmp_path), "0"], capture_output=True, text=True
        )
        assert child.returncode == 0 and "held" in child.stdout
    assert HOLDER_ENV not in os.environ


def test_sdpose_pipeline_beside_a_running_one_is_one_line_before_any_service(tmp_path, holder):
    process = holder(60)
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "sdpose.cli", "pipeline"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != HOLDER_ENV},
    )
    assert result.returncode == 75, result.stderr
    lines = [line for line in result.stderr.splitlines() if "busy" in line]
    assert len(lines) == 1 and f"pid {process.pid}" in lines[0]
    assert "Traceback" not in result.stderr
    assert time.monotonic() - began < 30  # no Prefect or Ray start-up
    assert not (tmp_path / ".prefect").exists() and not (tmp_path / "logs").exists()
