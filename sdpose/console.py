"""What a person sees of a stage: a start line, marked lines, progress bars, a result line.

A stage command runs inside `stage_console`: the process's stdout and stderr (file
descriptors 1 and 2, so Ray's, C extensions' and child processes' output too) go to the
stage's log file, `logs/<stage>.log`; the terminal gets only the lines written with `say`,
from this process or from any Ray task or actor of the run, whose output Ray forwards to
this process prefixed with the actor's name (the marker finds the line inside it).
`warn` lines go to the terminal's stderr; `progress` lines draw a bar at an interactive
terminal and are dropped otherwise.
docs/console.md shows what a run looks like.

The bar is tqdm's (installed with DVC), imported only where a bar is drawn. Not rich's:
`rich.progress` needs a Live display that owns the terminal and redraws from its own
thread, while a bar here moves only when a line arrives and must step aside for stderr
warnings, which tqdm's clear()/refresh() on a given stream do. Import cost is no reason
either way: `-X importtime` measured tqdm 4.70.1 at 33-39 ms (min-median of 20; most of it
`importlib.metadata` for its version) and `rich.progress` at 31-39 ms, on a busy 2-core box.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TextIO
from weakref import WeakSet

MARKER = "[sdpose] "
PROGRESS_MARKER = "[sdpose:progress] "
WARNING_MARKER = "[sdpose:warning] "
LOG_DIR_ENV = "SDPOSE_LOG_DIR"  # where stage logs go (the flow points experiments at the project)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def say(text: str) -> None:
    """A line for the terminal: from a stage's driver, a Ray Train worker or a Tune callback."""
    _emit(MARKER + text)


def warn(text: str) -> None:
    """A warning a person must see (on the terminal's stderr), e.g. a split losing records."""
    _emit(WARNING_MARKER + text, error=True)


def progress(name: str, done: int, total: int) -> None:
    """`done` of `total` units of `name`: a bar at a terminal, nothing elsewhere."""
    _emit(f"{PROGRESS_MARKER}{name} {int(done)} {int(total)}")


def _emit(line: str, error: bool = False) -> None:
    # In a stage's driver, sys.stdout is its router. Elsewhere (a Ray worker) the process's
    # own stdout: Ray forwards it to the driver once, while Train V2 would also copy a
    # `print` into its logging, which reaches the driver a second time.
    if isinstance(sys.stdout, _Router):
        stream = sys.stdout
    elif error:
        stream = sys.__stderr__ or sys.stderr
    else:
        stream = sys.__stdout__ or sys.stdout
    stream.write(line + "\n")
    stream.flush()


def interactive(stream: TextIO) -> bool:
    """Bars help a person at a terminal and only clutter CI logs and log files."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return stream.isatty() and not ci


def log_dir(workdir: Path) -> Path:
    """`$SDPOSE_LOG_DIR` or `<workdir>/logs`."""
    return Path(os.environ.get(LOG_DIR_ENV) or Path(workdir) / "logs")


class Console:
    """Routes marked lines to the terminal and keeps one tqdm bar below them."""

    def __init__(
        self,
        terminal: TextIO,
        bars: bool,
        errors: TextIO | None = None,
        log: TextIO | None = None,
    ) -> None:
        self.terminal, self.bars, self.errors = terminal, bars, errors or terminal
        self.log = log  # where `line` also writes (marked lines reach the log on their own)
        self._bar: Any = None  # the tqdm bar on the terminal, if any
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        """A line of the stage's own (start, result): on the terminal and in the log."""
        if self.log is not None:
            self.log.write(text + "\n")
        self._show(text)

    def _show(self, text: str) -> None:
        with self._lock:
            self._clear_bar()
            self.terminal.write(text + "\n")
            self._redraw_bar()
            self.terminal.flush()

    def handle(self, raw: str) -> None:
        """One line of the stage's output: shown if marked, a bar if a progress line."""
        text = _ANSI.sub("", raw)
        if (at := text.find(WARNING_MARKER)) >= 0:
            self.warning(text[at + len(WARNING_MARKER) :].rstrip())
        elif (at := text.find(PROGRESS_MARKER)) >= 0:
            if self.bars:
                self._draw(text[at + len(PROGRESS_MARKER) :])
        elif (at := text.find(MARKER)) >= 0:
            self._show(text[at + len(MARKER) :].rstrip())

    def warning(self, text: str) -> None:
        with self._lock:
            self._clear_bar()
            self.terminal.flush()
            self.errors.write(f"WARNING: {text}\n")
            self.errors.flush()
            self._redraw_bar()
            self.terminal.flush()

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()  # leave=False: it wipes itself off the line
                self._bar = None
            self.terminal.flush()

    def _draw(self, fields: str) -> None:
        try:
            name, done, total = fields.rsplit(" ", 2)
            done_n, total_n = int(done), max(int(total), 1)
        except ValueError:
            return
        with self._lock:
            bar = self._bar
            if bar is None or bar.desc != name or done_n < bar.n:  # another count: a new bar
                if bar is not None:
                    bar.close()
                # `initial`: a resumed run's rate counts only what this run does
                self._bar = _bar_type()(desc=name, total=total_n, initial=done_n,
                                        file=self.terminal)  # fmt: skip
            else:
                bar.total = total_n
                if done_n > bar.n:
                    bar.update(done_n - bar.n)  # tqdm's rate and ETA come from its updates
                else:
                    bar.refresh()

    def _clear_bar(self) -> None:
        if self._bar is not None:
            self._bar.clear()

    def _redraw_bar(self) -> None:
        if self._bar is not None:
            self._bar.refresh()


def _size(stream: Any) -> tuple[int | None, int | None]:
    """tqdm's own size probe gives -1 columns for a terminal of no size (a bare pty)."""
    try:
        columns, rows = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None, None
    return (columns - 1 if columns > 0 else None), (rows - 1 if rows > 0 else None)


@functools.cache
def _bar_type() -> type:
    """A tqdm bar for one stream."""
    from tqdm import tqdm  # lazy: only a process that draws a bar needs it (Ray workers never)

    class Bar(tqdm):
        monitor_interval = 0  # no monitor thread: the bar moves only when a line arrives
        # its own set and lock: another library's bars neither shift nor block it, and no
        # multiprocessing lock is made for a bar only this process draws
        _instances: ClassVar[WeakSet[Any]] = WeakSet()
        _lock = threading.RLock()

        def __init__(self, **kwargs: Any) -> None:
            columns, rows = _size(kwargs["file"])
            super().__init__(ncols=columns, nrows=rows, position=0, leave=False,
                             disable=False, mininterval=0, miniters=1, **kwargs)  # fmt: skip
            self.dynamic_ncols = _size  # follows a resized terminal

    return Bar


class _Router(io.TextIOBase):
    """sys.stdout / sys.stderr of a stage: everything to the log, marked lines on."""

    def __init__(self, log: TextIO, console: Console) -> None:
        self._log, self._console = log, console
        self._pending = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._log.write(text)
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._console.handle(line)
        return len(text)

    def flush(self) -> None:
        self._log.flush()

    def isatty(self) -> bool:  # libraries asking whether to draw their own bars: no
        return False

    def fileno(self) -> int:
        return self._log.fileno()


@contextmanager
def stage_console(stage: str, workdir: Path) -> Iterator[Console]:
    """Run a stage with its detail in `logs/<stage>.log` and a readable terminal.

    Prints the start line, and on failure where the detail is; the caller prints the result
    line with `Console.line`. Appends, so a resumed or retried stage keeps the earlier run.
    """
    path = log_dir(workdir) / f"{stage}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal, errors = (
        os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace") for fd in saved
    )
    log = open(path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    console = Console(terminal, bars=interactive(sys.stdout), errors=errors, log=log)
    log.write(f"\n===== sdpose {stage}: {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n")
    streams = sys.stdout, sys.stderr
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = _Router(log, console)
    started = time.perf_counter()
    console.line(f"{stage}: started (detail: {_shown(path)})")
    try:
        yield console
    except BaseException as error:
        # the traceback goes to the log, never to the terminal (sdpose.cli prints one line)
        log.write("".join(traceback.format_exception(error)))
        with contextlib.suppress(AttributeError):  # built-in exceptions without a __dict__
            error._sdpose_logged = True
        console.line(f"{stage}: failed after {time.perf_counter() - started:.1f} s; "
                     f"the detail is in {_shown(path)}")  # fmt: skip
        raise
    finally:
        console.close()
        sys.stdout, sys.stderr = streams
        log.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        log.close()
        terminal.close()
        errors.close()


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def result_line(stage: str, summary: dict[str, Any], seconds: float) -> str:
    """The one line a stage ends with: its headline numbers."""
    describe = _RESULTS.get(stage)
    try:
        what = describe(summary) if describe else ""
    except (KeyError, TypeError, ValueError):
        what = ""
    return f"{stage}: done in {seconds:.1f} s" + (f": {what}" if what else "")


def _registry(summary: dict[str, Any]) -> str:
    registry = summary.get("registry") or {}
    if "version" not in registry:
        return f"not registered ({registry.get('reason', 'no reason given')})"
    role = "champion" if registry.get("champion") else "not champion"
    return f"registered version {registry['version']} ({role}: {registry.get('reason')})"


def _tune(summary: dict[str, Any]) -> str:
    counts = (f"{summary['trial_count']} trials ({summary['completed']} completed, "
              f"{summary['stopped']} stopped early, {summary['failed']} failed)")  # fmt: skip
    if summary.get("repeats"):
        counts += f"; {summary['repeats']}"
    best = summary.get("best")
    if not best:
        return counts + "; no best trial"
    if summary.get("learned") is False:
        return (
            f"{counts}; no trial learned anything: the best student AP, "
            f"{best['student_ap']:.4f}, is below registry.min_ap {summary['min_ap']:g}"
        )
    return f"{counts}; best {best['id']} {best['config']}: student AP {best['student_ap']:.4f}"


def _evaluate(summary: dict[str, Any]) -> str:
    per_cycle = [
        f"{key.removesuffix('_ap_per_cycle')} {[round(ap, 4) for ap in value]}"
        for key, value in summary.items()
        if key.endswith("_ap_per_cycle")
    ]
    line = f"student AP {summary['student_ap']:.4f} (the {summary['best']} model)"
    return line + (f"; AP per cycle: {', '.join(per_cycle)}" if per_cycle else "")


_RESULTS = {
    "synth": lambda s: (
        f"{s['train_images']} train / {s['val_images']} val images, "
        f"{s['train_people']} / {s['val_people']} people"
    ),
    "prepare": lambda s: (
        f"{s['train']} train / {s['val']} val instances "
        f"({s['train_skipped'] + s['val_skipped']} skipped)"
    ),
    "crops": lambda s: f"{s['rows']} crops ({s['crops_per_s']}/s) on Ray {s['ray']['address']}",
    "train": lambda s: (
        f"{s['epochs']} epochs, student AP {s['student_ap']:.4f}, teacher AP "
        f"{s['teacher_ap']:.4f} (best student {s['best_student_ap']:.4f}"
        + (
            f", from {s['initial_student_ap']:.4f} at {s['init']}"
            if s.get("initial_student_ap") is not None
            else ""
        )
        + f"), {s['samples_per_s']:.1f} samples/s"
    ),
    "tune": _tune,
    "evaluate": _evaluate,
    "export": lambda s: f"{_shown(Path(s['onnx']))}; {_registry(s)}",
}
