"""What the benches measure with (a module, not a benchmark): CPU and wall time of a process
tree, its memory, and the sdpose-t training step's rate.

Two ways to see memory. `tree_pss_mb` sums the proportional set size of a tree, counting
shared pages (Ray's object store, libraries) once: the tree's real footprint, but a costly
read of every mapping. `TreeSampler` follows a running command instead (`dvc repro`, a stage,
a child process) and keeps, per process, its role (`classify`), peak RSS and last CPU time
(`ProcessBook`), plus the peak bytes in Ray's object store and in its spill directory.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

CPUS = 2  # what the benches give Ray and torch: the machine they are tuned for
MB = 1 << 20


# --------------------------------------------------------------------------- CPU and wall
class Meter:
    """Wall seconds and CPU seconds of this process tree (driver, Ray services, workers).

    CPU seconds do not depend on what else runs on the machine: with C_loop and C_ray for
    the same work, two idle cores would give the Ray stage at most 2 * C_loop / C_ray the
    loop's rate. Wall time is what a user sees; on a shared machine it understates Ray.
    """

    def __enter__(self) -> Meter:
        self.cpu, self.wall = -tree_cpu_seconds(), -time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu += tree_cpu_seconds()
        self.wall += time.perf_counter()


def tree_cpu_seconds(root_pid: int | None = None) -> float:
    """User + system CPU seconds of a process and its living descendants."""
    root = psutil.Process(root_pid or os.getpid())
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def training_meter(
    preset: str = "sdpose-t", batch: int = 32, steps: int = 3, threads: int = CPUS
) -> Meter:
    """Wall and CPU time of `steps` full training steps of `preset`, after a warm-up step:
    forward of all cycles, SDPose loss, backward, Adam; what a feed has to keep up with."""
    import torch

    from sdpose.models import build_model
    from sdpose.training.losses import DistillationLoss

    torch.set_num_threads(threads)
    model = build_model(preset).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = DistillationLoss()
    images = torch.randn(batch, 3, *model.config.input_size)
    target, weight = torch.rand(batch, 17, *model.config.heatmap_size), torch.ones(batch, 17)

    def step() -> None:
        loss = loss_fn(model(images), target, weight)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    with Meter() as meter:
        for _ in range(steps):
            step()
    return meter


# --------------------------------------------------------------------------- PSS
def tree_pss_mb(root_pid: int) -> tuple[float, float]:
    """(all, object store) proportional set size of a process tree, MB.

    PSS splits shared pages between the processes that map them, so the sum over the tree
    counts the object store (Ray's /dev/shm/plasma* arena) and shared libraries once.
    """
    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    total = store = 0
    for process in processes:
        try:
            with open(f"/proc/{process.pid}/smaps") as smaps:
                in_store = False
                for line in smaps:
                    if not line[0].isupper():  # a mapping's header line: "addr perms ... path"
                        in_store = "/dev/shm/plasma" in line
                    elif line.startswith("Pss:"):
                        kilobytes = int(line.split()[1])
                        total += kilobytes
                        store += kilobytes if in_store else 0
        except OSError:
            continue
    return total / 1024, store / 1024


class PeakMemory:
    """Samples tree_pss_mb of this process every 0.3 s in a thread; peaks in MB."""

    def __enter__(self) -> PeakMemory:
        self.peak = self.store = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            total, store = tree_pss_mb(os.getpid())
            self.peak, self.store = max(self.peak, total), max(self.store, store)
            self._stop.wait(0.3)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- roles
ROLES = ("sdpose driver", "pool worker", "ray worker", "ray service", "dvc", "other")
# Ray's agents run as `ray::` processes like workers, but are services of the node.
RAY_SERVICE_TITLES = ("DashboardAgent", "RuntimeEnvAgent")
SHELLS = ("sh", "bash", "dash", "zsh")


def classify(cmdline: str) -> tuple[str, str]:
    """(role, process name) of a process from its command line (NULs read as spaces).

    Ray workers retitle themselves `ray::<task or actor>` and the dashboard's modules
    `ray-dashboard-<module>`; Ray's services are its binaries and scripts under the ray
    package (the raylet's arguments name default_worker.py, so the program decides, not a
    substring); the synth pool's workers are multiprocessing spawn children.
    """
    words = cmdline.split()
    if not words:
        return "other", "?"
    if words[0].startswith("ray::"):
        title = words[0][len("ray::") :].split("(")[0]
        return "ray service" if title in RAY_SERVICE_TITLES else "ray worker", title
    if words[0].startswith("ray-dashboard-"):
        return "ray service", words[0].removeprefix("ray-").rsplit("-", 1)[0]
    program, rest = _program(words)
    name = Path(program).name
    if program == "-c":  # multiprocessing's children: the pool's, or helpers of Ray's dashboard
        code = " ".join(rest)
        return ("pool worker", "spawn") if "spawn_main" in code else ("other", _helper(code))
    if name == "sdpose":
        return "sdpose driver", " ".join(["sdpose", *rest[:1]])
    if name == "scale.py":
        return "sdpose driver", "bench child"
    if name == "dvc":
        return "dvc", "dvc"
    if name == "default_worker.py":  # a Ray worker before it retitles itself
        return "ray worker", "default_worker"
    if "/ray/" in program:
        path = Path(program)  # dashboard/agent.py: "dashboard_agent"
        generic = path.stem in ("agent", "main")
        return "ray service", f"{path.parent.name}_{path.stem}" if generic else path.stem
    return "other", "shell" if name in SHELLS else name


def _program(words: list[str]) -> tuple[str, list[str]]:
    """(program, its arguments): a Python interpreter's script, `-m` module or `-c`."""
    if not Path(words[0]).name.startswith("python"):
        return words[0], words[1:]
    for index, word in enumerate(words[1:], start=1):
        if word == "-m" and index + 1 < len(words):
            return words[index + 1], words[index + 2 :]
        if word == "-c" or not word.startswith("-"):
            return word, words[index + 1 :]
    return words[0], []


def _helper(code: str) -> str:
    """The multiprocessing helper a `python -c` child runs (resource_tracker, forkserver)."""
    match = re.search(r"multiprocessing\.(\w+)", code)
    return match.group(1) if match else "python -c"


# --------------------------------------------------------------------------- bookkeeping
@dataclass(frozen=True)
class Sample:
    """One reading of one process; `rss` is the larger of its RSS now and its high-water mark."""

    pid: int
    started: float  # create time, epoch seconds: with the pid, the process's identity
    cmdline: str
    cpu_s: float  # user + system of the process itself, so far
    rss: int  # bytes
    at: float  # epoch seconds


@dataclass
class ProcessRecord:
    """Everything kept of one process: its latest role, CPU so far and peak RSS."""

    pid: int
    started: float
    role: str
    name: str
    last_seen: float
    cpu_s: float = 0.0
    peak_rss: int = 0
    ended: float | None = None  # when first seen gone, for the watched roles (TreeSampler)

    @property
    def end(self) -> float:
        return self.last_seen if self.ended is None else self.ended


@dataclass
class ProcessBook:
    """Per-process records of a sampled tree, and the peaks of Ray's store and spill.

    Processes are keyed by (pid, create time), so a reused pid is a new process. CPU time is
    each process's last reading, so a finished process still counts what it used up to its
    last sample. The role is the latest classification: a process sampled between fork and
    exec shows its parent's command line first; an exiting one shows none, and keeps its role.
    """

    records: dict[tuple[int, float], ProcessRecord] = field(default_factory=dict)
    store_peak: int = 0  # bytes of Ray's object store arena in use
    spill_peak: int = 0  # bytes in Ray's spill directories

    def add(self, sample: Sample) -> ProcessRecord:
        role, name = classify(sample.cmdline)
        key = (sample.pid, sample.started)
        record = self.records.setdefault(
            key, ProcessRecord(sample.pid, sample.started, role, name, sample.at)
        )
        if sample.cmdline:  # an exiting process has released its command line
            record.role, record.name = role, name
        record.last_seen = sample.at
        record.cpu_s = max(record.cpu_s, sample.cpu_s)
        record.peak_rss = max(record.peak_rss, sample.rss)
        return record

    def note_ray(self, store: int, spill: int) -> None:
        self.store_peak = max(self.store_peak, store)
        self.spill_peak = max(self.spill_peak, spill)

    def cpu_seconds(self) -> float:
        return sum(record.cpu_s for record in self.records.values())

    def peak_rss_by_role(self) -> dict[str, tuple[int, str]]:
        """role -> (largest peak RSS of a process of that role, that process's name)."""
        peaks: dict[str, tuple[int, str]] = {}
        for record in self.records.values():
            if record.peak_rss > peaks.get(record.role, (-1, ""))[0]:
                peaks[record.role] = (record.peak_rss, record.name)
        return peaks

    def close_ended(self, roles: Iterable[str], running: Callable[[ProcessRecord], bool],
                    at: float) -> None:  # fmt: skip
        """Mark the processes of `roles` that are no longer `running` as ended at `at`."""
        for record in self.open_records(roles):
            if not running(record):
                record.ended = at

    def open_records(self, roles: Iterable[str]) -> list[ProcessRecord]:
        """The records of `roles` not yet marked ended."""
        return [r for r in self.records.values() if r.role in roles and r.ended is None]

    def span(self, role: str) -> tuple[float, float] | None:
        """(first start, end) of the processes of a role, epoch seconds."""
        records = [record for record in self.records.values() if record.role == role]
        if not records:
            return None
        return min(r.started for r in records), max(r.end for r in records)

    def count(self, role: str) -> int:
        return sum(record.role == role for record in self.records.values())


# --------------------------------------------------------------------------- sampling
def read_sample(process: psutil.Process, now: float) -> Sample | None:
    """A process's reading, or None when it is gone or unreadable."""
    try:
        with open(f"/proc/{process.pid}/cmdline", "rb") as handle:
            cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        times, rss = process.cpu_times(), status_rss(process.pid)
        return Sample(
            process.pid, process.create_time(), cmdline, times.user + times.system, rss, now
        )
    except (psutil.Error, OSError):
        return None


def status_rss(pid: int) -> int:
    """max(VmRSS, VmHWM) of a process, bytes: the high-water mark catches peaks between
    samples (exec resets it, so a spawned worker does not inherit its parent's)."""
    values = [0]
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values.append(int(line.split()[1]) * 1024)
    return max(values)


def plasma_arenas(pid: int) -> dict[int, int]:
    """inode -> bytes in use of the object store arenas a process holds open (the raylet).

    Ray's plasma store maps an unlinked /dev/shm/plasma* file (or one under /tmp when
    /dev/shm is small); tmpfs allocates its pages on first touch, so the file's allocated
    blocks are the store's use. By inode, so that a raylet's child between fork and exec,
    which holds the same file, does not count it twice.
    """
    arenas: dict[int, int] = {}
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            path = f"/proc/{pid}/fd/{fd}"
            try:
                if "/plasma" in os.readlink(path):
                    info = os.stat(path)
                    arenas[info.st_ino] = info.st_blocks * 512
            except OSError:
                continue
    except OSError:
        return {}
    return arenas


SESSION_DIR = re.compile(r"--session[-_]dir=(\S+)")
SPILL_PREFIX = "ray_spilled_objects"  # ray._private.ray_constants.DEFAULT_OBJECT_PREFIX


def spill_bytes(session_dirs: Iterable[str]) -> int:
    """Bytes under Ray's default spill directories: <session dir>/ray_spilled_objects_<node>
    (ray._private.node: a node without object_spilling_directory spills into its session)."""
    total = 0
    for session in session_dirs:
        for directory in Path(session).glob(f"{SPILL_PREFIX}_*"):
            total += dir_bytes(directory)
    return total


def dir_bytes(path: Path) -> int:
    """Apparent size of the files under `path` (0 if absent)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    return total


def is_running(record: ProcessRecord) -> bool:
    """Whether the process of a record still runs (not gone, reused or a zombie)."""
    try:
        process = psutil.Process(record.pid)
        return process.create_time() == record.started and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class TreeSampler:
    """Samples a process tree every `interval` s in a thread into a ProcessBook.

    A process that lives less than `interval` may be missed, and one's last CPU reading is
    up to `interval` old: small next to the stages' seconds. The processes of the `watch`
    roles are checked every TICK s: their end (a stage's wall time) is known to TICK, and
    their high-water mark is read until then, so a peak just before a short stage exits
    (a second-long prepare writing its manifests) is not lost between samples.
    """

    TICK = 0.05

    def __init__(
        self,
        root_pid: int,
        interval: float = 0.5,
        watch: tuple[str, ...] = ("sdpose driver", "dvc"),
    ) -> None:
        self.root_pid, self.interval, self.watch = root_pid, interval, watch
        self.book = ProcessBook()
        self._sessions: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.tick()

    def _run(self) -> None:
        next_sample = 0.0
        while not self._stop.is_set():
            if time.time() >= next_sample:
                self.sample_once()
                next_sample = time.time() + self.interval
            self.tick()
            self._stop.wait(self.TICK)

    def tick(self) -> None:
        """The watched processes: which have ended, and the others' high-water marks."""
        self.book.close_ended(self.watch, is_running, time.time())
        for record in self.book.open_records(self.watch):
            try:
                record.peak_rss = max(record.peak_rss, status_rss(record.pid))
            except OSError:
                continue

    def sample_once(self) -> None:
        now = time.time()
        try:
            root = psutil.Process(self.root_pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        arenas: dict[int, int] = {}
        for process in processes:
            sample = read_sample(process, now)
            if sample is None:
                continue
            record = self.book.add(sample)
            self._sessions.update(SESSION_DIR.findall(sample.cmdline))
            if record.name == "raylet":
                arenas.update(plasma_arenas(sample.pid))
        self.book.note_ray(sum(arenas.values()), spill_bytes(self._sessions))


if __name__ == "__main__":  # `make bench` runs every bench/*.py
    print("bench/measure.py: the benches' measuring helpers, nothing to measure")
