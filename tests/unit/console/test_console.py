"""The stage console: detail to logs/<stage>.log, marked lines and bars to the terminal.

`stage_console` redirects file descriptors 1 and 2, so each case runs a small stage in a
subprocess, once with pipes (CI, a log file) and once under a pseudo-terminal. The bar
is tqdm's; `_screen` replays a terminal's output to see what a person is left looking at.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest
import tqdm

from sdpose.console import Console, result_line
from sdpose.training.loop import epoch_line
from sdpose.tuning.trial_lines import trial_line

pytestmark = pytest.mark.unit

COLUMNS = 80  # the pseudo-terminal's width
LINES = [
    "train: started (detail: logs/train.log)",
    "epoch 1/2  loss 0.01",
    "driver line",
    "WARNING: split train lost 11 of 12 records",
    "train: done in 1.0 s",
    "after the stage",  # the terminal is back once the stage ends
]

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


def _run(workdir: Path, tty: bool, fail: bool = False, ci: str = "") -> tuple[int, str]:
    env = {**os.environ, "FAIL": "1" if fail else "", "CI": ci}
    env.pop("SDPOSE_LOG_DIR", None)
    if not tty:
        done = subprocess.run([sys.executable, "-c", STAGE], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        return done.returncode, done.stdout + done.stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, COLUMNS, 0, 0))
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


def _screen(output: str) -> list[str]:
    """The lines a terminal shows after `output`: \\r returns, later text overwrites."""
    lines: list[list[str]] = [[]]
    row = col = 0
    for piece in re.split(r"(\r|\n|\x1b\[K)", output):
        if piece == "\r":
            col = 0
        elif piece == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append([])
        elif piece == "\x1b[K":
            del lines[row][col:]
        elif piece:
            line = lines[row] = lines[row] + [" "] * (col - len(lines[row]))
            line[col : col + len(piece)] = piece
            col += len(piece)
    shown = ["".join(line).rstrip() for line in lines]
    return shown[:-1] if shown and not shown[-1] else shown


class TtyTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_only_marked_lines_and_the_log_gets_everything(tmp_path: Path) -> None:
    code, shown = _run(tmp_path, tty=False)
    assert code == 0, shown
    # the warning is on stderr, which the pipes hand back after stdout
    assert shown.splitlines() == [line for line in LINES if "WARNING" not in line] + [LINES[3]]
    assert "\r" not in shown and "3/10" not in shown  # no bar in a pipe
    log = (tmp_path / "logs" / "train.log").read_text()
    details = ("TrainingReport(", "Progress bars disabled", "raw fd 2 write", "driver line",
               "train: started", "train: done in 1.0 s")  # fmt: skip
    for detail in details:
        assert detail in log
    assert "after the stage" not in log
    _assert_no_bar_in(log)


def _assert_no_bar_in(log: str) -> None:
    # the progress line reaches the log as written, never a bar frame
    assert "[sdpose:progress] train iterations 3 10\n" in log
    assert "\r" not in log and "%|" not in log


def test_a_terminal_gets_a_progress_bar(tmp_path: Path) -> None:
    code, shown = _run(tmp_path, tty=True)
    assert code == 0, shown
    frames = [piece for piece in re.split(r"[\r\n]", shown) if "train iterations" in piece]
    assert frames, shown
    for frame in frames:  # tqdm's bar, sized to the terminal, with counts, elapsed<ETA, rate
        bar = r"\|█+[▏▎▍▌▋▊▉]? +\|"  # unicode blocks: the terminal is UTF-8
        assert re.fullmatch(rf"train iterations:  30%{bar} 3/10 \[00:\d\d<\?, \?it/s\]", frame)
        assert len(frame) < COLUMNS
    assert _screen(shown) == LINES  # the bar is cleared before each line and at the end
    assert "TrainingReport(" not in shown
    _assert_no_bar_in((tmp_path / "logs" / "train.log").read_text())


def test_a_terminal_in_ci_gets_no_bar(tmp_path: Path) -> None:
    code, shown = _run(tmp_path, tty=True, ci="true")
    assert code == 0, shown
    assert "3/10" not in shown and "%|" not in shown
    assert _screen(shown) == LINES


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


def test_the_bar_is_drawn_by_tqdm_and_steps_aside_for_lines(monkeypatch) -> None:
    terminal = TtyTerminal()
    console = Console(terminal, bars=True)
    console.handle("[sdpose:progress] train iterations 3 10")
    time.sleep(0.01)  # tqdm's rate needs time to pass between counts
    console.handle("\x1b[36m(RayTrainWorker pid=7)\x1b[0m [sdpose] epoch 1/2")
    console.handle("[sdpose:progress] train iterations 5 10")
    drawn = terminal.getvalue()
    assert "train iterations:  30%|" in drawn
    assert re.search(
        r"train iterations:  50%\|[^|]+\| 5/10 \[00:\d\d<00:\d\d, +[\d.]+it/s\]", drawn
    )
    console.warning("split train lost 11 of 12 records")  # to the same stream: no errors given
    console.close()
    assert _screen(terminal.getvalue()) == [
        "epoch 1/2",
        "WARNING: split train lost 11 of 12 records",
    ]
    # the frames are whatever tqdm renders
    monkeypatch.setattr(
        tqdm.tqdm, "format_meter", staticmethod(lambda n, total, **_: f"<{n}/{total}>")
    )
    terminal = TtyTerminal()
    console = Console(terminal, bars=True)
    for line in ("trials 1 4", "trials 2 4", "crops (splits) 1 2", "crops (splits) 0 2"):
        console.handle(f"[sdpose:progress] {line}")
    assert re.findall(r"<\d/\d>", terminal.getvalue()) == ["<1/4>", "<2/4>", "<1/2>", "<0/2>"]
    console.close()
    assert _screen(terminal.getvalue()) == []


def test_no_bar_when_bars_are_off_even_on_a_tty() -> None:
    terminal = TtyTerminal()
    console = Console(terminal, bars=False)
    console.handle("[sdpose:progress] train iterations 3 10")
    console.handle("[sdpose] epoch 1/2")
    console.close()
    assert terminal.getvalue() == "epoch 1/2\n"


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
