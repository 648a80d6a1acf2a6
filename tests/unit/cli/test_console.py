"""The stage console: detail to logs/<stage>.log, marked lines and bars to the terminal.

`stage_console` redirects file descriptors 1 and 2, so each case runs a small stage in a
subprocess, once with pipes (CI, a log file) and once under a pseudo-terminal.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sdpose.console import Console, result_line
from sdpose.training.loop import epoch_line
from sdpose.tuning.trial_lines import trial_line

pytestmark = pytest.mark.unit

# A stage that talks the way a real one does: library chatter on stdout and stderr, a C
# level write, a Ray-forwarded worker line with its prefix and colour codes, progress.
STAGE = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from sdpose import console
    from sdpose.console import stage_console
    with stage_console("train", Path.cwd()) as shown:
        print("Reporting training result 1: TrainingReport(checkpoint=...)")
        print("WARNING Progress bars disabled", file=sys.stderr)
        os.write(2, b"raw fd 2 write\\n")
        console.progress("train iterations", 3, 10)
        print("\\x1b[36m(RayTrainWorker pid=7)\\x1b[0m [sdpose] epoch 1/2  loss 0.01")
        console.say("driver line")
        console.warn("split train lost 11 of 12 records")
        shown.line("train: done in 1.0 s")
        if os.environ.get("FAIL"):
            raise RuntimeError("boom")
    print("after the stage")
    """
)


def _run(workdir: Path, tty: bool, fail: bool = False) -> tuple[int, str]:
    env = {**os.environ, "FAIL": "1" if fail else "", "CI": ""}
    env.pop("SDPOSE_LOG_DIR", None)
    if not tty:
        done = subprocess.run([sys.executable, "-c", STAGE], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        return done.returncode, done.stdout + done.stderr
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-c", STAGE], cwd=workdir, env=env,
                               stdout=follower, stderr=follower)  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the follower side closed: the process is done
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=60), b"".join(chunks).decode()


def test_terminal_gets_only_marked_lines_and_the_log_gets_everything(tmp_path: Path) -> None:
    code, shown = _run(tmp_path, tty=False)
    assert code == 0, shown
    assert shown.splitlines() == [
        "train: started (detail: logs/train.log)",
        "epoch 1/2  loss 0.01",
        "driver line",
        "train: done in 1.0 s",
        "after the stage",  # the terminal is back once the stage ends
        "WARNING: split train lost 11 of 12 records",  # on stderr, printed after stdout here
    ]
    log = (tmp_path / "logs" / "train.log").read_text()
    details = ("TrainingReport(", "Progress bars disabled", "raw fd 2 write", "driver line",
               "train: started", "train: done in 1.0 s")  # fmt: skip
    for detail in details:
        assert detail in log
    assert "after the stage" not in log


def test_a_terminal_gets_a_progress_bar(tmp_path: Path) -> None:
    code, shown = _run(tmp_path, tty=True)
    assert code == 0, shown
    assert f"train iterations [{'#' * 8}{'.' * 20}] 3/10" in shown  # 3/10 of 28 cells
    assert "\r\x1b[K" in shown  # the bar is cleared before the next line
    assert "TrainingReport(" not in shown


def test_a_failing_stage_says_where_the_detail_is_and_appends_to_its_log(tmp_path: Path) -> None:
    _run(tmp_path, tty=False)
    code, shown = _run(tmp_path, tty=False, fail=True)
    assert code == 1
    assert "train: failed after" in shown and "logs/train.log" in shown
    assert "RuntimeError: boom" in shown  # the traceback reaches the terminal
    assert (tmp_path / "logs" / "train.log").read_text().count("===== sdpose train") == 2


def test_console_ignores_unmarked_and_malformed_lines() -> None:
    class Terminal(list):
        def write(self, text: str) -> None:
            self.append(text)

        def flush(self) -> None:
            pass

    terminal = Terminal()
    console = Console(terminal, bars=True)  # type: ignore[arg-type]
    console.handle("plain chatter")
    console.handle("[sdpose:progress] broken")
    console.handle("(TrainController pid=3) [sdpose] trial 1/2 done")
    assert "".join(terminal) == "trial 1/2 done\n"


def test_result_and_progress_lines_carry_the_numbers() -> None:
    train = {"epochs": 6, "student_ap": 0.4123, "teacher_ap": 0.5, "best_student_ap": 0.42,
             "samples_per_s": 61.26}  # fmt: skip
    assert result_line("train", train, 12.34) == (
        "train: done in 12.3 s: 6 epochs, student AP 0.4123, teacher AP 0.5000 "
        "(best student 0.4200), 61.3 samples/s"
    )
    assert result_line("train", {}, 1.0) == "train: done in 1.0 s"  # never fails a stage
    registry = {"version": 3, "champion": False, "reason": "below registry.min_ap 0.05"}
    export = result_line("export", {"onnx": "/x/s.onnx", "registry": registry}, 2.0)
    assert export.endswith("registered version 3 (not champion: below registry.min_ap 0.05)")
    history = [
        {"epoch": 0, "loss": 0.02, "student_ap": 0.1, "teacher_ap": 0.2, "samples_per_s": 50.0,
         "epoch_time_s": 9.0, "val_time_s": 1.0},
        {"epoch": 1, "loss": 0.01, "student_ap": 0.3, "teacher_ap": 0.4, "samples_per_s": 55.0,
         "epoch_time_s": 19.0, "val_time_s": 1.0},
    ]  # fmt: skip
    line = epoch_line(history, epochs=5)
    assert line.startswith("epoch 2/5  loss 0.01000  student AP 0.3000  teacher AP 0.4000")
    assert line.endswith("~45 s left")  # 3 epochs left at the mean of 10 s and 20 s
    ended = trial_line(2, 4, "a_00001", {"model.dim": 48}, "stopped early",
                       {"student_ap": 0.25, "teacher_ap": 0.3, "epochs_done": 1})  # fmt: skip
    assert ended == (
        "trial 2/4 a_00001 {'model.dim': 48}: stopped early, student AP 0.2500, "
        "teacher AP 0.3000, 1 epochs"
    )
    assert trial_line(1, 4, "b", {}, "failed", {}) == "trial 1/4 b {}: failed"
