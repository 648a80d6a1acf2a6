"""Pipeline scale: the data stages through DVC at fractions of COCO's size, and what grows.

COCO train2017 has 149,813 labelled people in 56,599 images, val2017 6,352 in 2,346. The
synthetic COCO-size set is those image counts at 640x480 with up to 5 people (2.68 people,
~80 KB of JPEG and ~1.15 KB of annotation JSON per image or person). Each size (a fraction of
it) gets a fresh git + DVC repo with the project's dvc.yaml, where `dvc repro synth`, then
`prepare`, then `crops` (cut for sdpose-t, 256x192) each run while a sampler follows the
process tree. Per stage: wall time of `dvc repro` and of the `sdpose` process in it (the
difference is DVC's hashing and caching), CPU seconds, both per 1k instances (labelled
people kept), peak RSS per process role (`measure.classify`), Ray's object store and spill
peaks, bytes written and DVC cache growth. Then `dvc status` and a no-op `dvc repro crops`
on the finished outputs; the train feed alone, streamed from the files in a fresh process
(Ray on 2 CPUs), next to the sdpose-t training step; and, at the smallest size only, a short
real `sdpose train` of sdpose-t on a slice of the crops (the slice does not depend on size).

The closing lines give each goal's figure, the goal and PASS/FAIL at the sizes run:
per-instance cost of prepare and crops at the largest size within 1.25x of the smallest;
every role's peak RSS within 1.5x of the smallest size and under 4 GiB; the streaming feed
>= 2x the sdpose-t step's samples/s; `dvc status` under 30 s. The last three are goals of
the full size and say so when it was not run. Every figure also goes to --out as JSON.

Usage: python bench/scale.py [--sizes 1/16,1/4] [--root DIR --keep [--reuse]] [--out FILE]
The documented full run: python bench/scale.py --sizes 1/16,1/4,1 (about an hour).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml
from measure import CPUS, MB, ROLES, Meter, ProcessBook, TreeSampler, dir_bytes, training_meter

REPO = Path(__file__).resolve().parents[1]
COCO_TRAIN_IMAGES, COCO_VAL_IMAGES = 56_599, 2_346
COCO_SIZE = {"image_size": [640, 480], "max_people": 5}  # synth.* of the COCO-size set
PRESET = "sdpose-t"  # the crops are cut for its 256x192 input
STAGES = ("synth", "prepare", "crops")
OUTPUTS = {"synth": "data/raw/synth", "prepare": "data/prepared", "crops": "data/crops"}
RUN_RAY_ENV = "SDPOSE_RAY_ADDRESS"  # sdpose.ray_runtime: a stage would join that Ray
RESULT_FILE = "scale-stages.json"  # a size's stage figures in its workdir, for --reuse
FEED_BATCH, FEED_WARMUP_BATCHES = 32, 4
PACED_BATCHES, PACE_S = 40, 0.25  # the feed's paced pass: a trainer's pace
PACED_LIMIT = 4096  # ~1.4 GB of augmented samples: more than the read-ahead budget
STEP_STEPS = 2  # an sdpose-t step of 32 takes ~13 s on two cores: two already average
RATE_GOAL, RSS_GROWTH_GOAL, RSS_LIMIT_MB = 1.25, 1.5, 4096.0
FEED_GOAL, STATUS_GOAL_S = 2.0, 30.0


# --------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Size:
    """A fraction of the COCO-size set and its image counts (at least one per split)."""

    label: str
    fraction: Fraction
    train_images: int
    val_images: int

    @property
    def full(self) -> bool:
        return self.fraction >= 1

    @property
    def slug(self) -> str:
        return self.label.replace("/", "-").replace(".", "_")


def parse_sizes(text: str) -> list[Size]:
    """Sizes from text like "1/16,1/4", smallest first: fractions, decimals or integers."""
    sizes = []
    for part in (piece.strip() for piece in text.split(",")):
        fraction = Fraction(part)
        if fraction <= 0:
            raise ValueError(f"size {part!r} is not positive")
        train = max(1, round(COCO_TRAIN_IMAGES * fraction))
        sizes.append(Size(part, fraction, train, max(1, round(COCO_VAL_IMAGES * fraction))))
    return sorted(sizes, key=lambda size: size.fraction)


# --------------------------------------------------------------------------- commands
@dataclass
class Measured:
    """One sampled command: wall time, output, the process book and the reaped CPU time."""

    wall_s: float
    output: str
    book: ProcessBook
    cpu_s_reaped: float  # rusage of the command and every descendant it reaped


def stage_env(workdir: Path) -> dict[str, str]:
    """DVC without analytics, its state in the workdir (not /var/tmp/dvc: removed with it),
    the venv's `sdpose` and `dvc` first, no outer Ray to join."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "CI": "1"}
    env["DVC_SITE_CACHE_DIR"] = str(workdir / ".dvc" / "tmp" / "site-cache")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop(RUN_RAY_ENV, None)
    return env


def run_measured(
    args: list[str], cwd: Path, env: dict[str, str], log: Path, interval: float
) -> Measured:
    """Run a command with its output in `log`, sampling its process tree; raise on failure.

    Output goes to a file, not a pipe: a process left behind would hold a pipe open.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        with TreeSampler(process.pid, interval) as sampler:
            _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    output = log.read_text(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({process.returncode}), {log}:\n"
                           f"{output[-3000:]}")  # fmt: skip
    return Measured(wall, output, sampler.book, usage.ru_utime + usage.ru_stime)


def run_quiet(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """(wall seconds, stdout + stderr) of a command that must succeed."""
    started = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return wall, done.stdout + done.stderr


def json_line(output: str) -> dict[str, Any]:
    """The last JSON object line a child printed (Ray may log after it)."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON result in the child's output:\n{output[-3000:]}")


# --------------------------------------------------------------------------- figures
def memory_figures(book: ProcessBook) -> dict[str, Any]:
    """Peak RSS per role (and which process), process counts, store and spill peaks."""
    peaks = book.peak_rss_by_role()
    return {
        "peak_rss_mb": {role: round(rss / MB, 1) for role, (rss, _) in peaks.items()},
        "peak_rss_process": {role: name for role, (_, name) in peaks.items()},
        "processes": {role: book.count(role) for role in peaks},
        "store_peak_mb": round(book.store_peak / MB, 1),
        "spill_peak_mb": round(book.spill_peak / MB, 1),
    }


def stage_figures(run: Measured) -> dict[str, Any]:
    """Times, CPU and memory of one `dvc repro <stage>`; the sdpose process runs from its
    create time to when the sampler first found it gone (TreeSampler.TICK apart)."""
    span = run.book.span("sdpose driver")
    stage_wall = span[1] - span[0] if span else float("nan")
    return {
        "repro_wall_s": round(run.wall_s, 2),
        "stage_wall_s": round(stage_wall, 2),
        "dvc_s": round(run.wall_s - stage_wall, 2),
        "cpu_s": round(run.book.cpu_seconds(), 2),
        "cpu_s_reaped": round(run.cpu_s_reaped, 2),
        **memory_figures(run.book),
    }


def stage_instances(workdir: Path) -> dict[str, int]:
    """Instances each stage handled: annotations synth wrote, people prepare kept, crops."""
    report = json.loads((workdir / "data/prepared/report.json").read_text())
    splits = report["splits"].values()
    crops = json.loads((workdir / "data/crops/summary.json").read_text())
    return {
        "synth": sum(split["records"] for split in splits),
        "prepare": sum(split["kept"] for split in splits),
        "crops": int(crops["rows"]),
    }


def add_rates(stages: list[dict[str, Any]], instances: dict[str, int]) -> None:
    """Seconds and CPU seconds per 1k instances, in place."""
    for stage in stages:
        count = max(instances[stage["stage"]], 1)
        stage["instances"] = instances[stage["stage"]]
        stage["stage_s_per_1k"] = round(1000 * stage["stage_wall_s"] / count, 3)
        stage["repro_s_per_1k"] = round(1000 * stage["repro_wall_s"] / count, 3)
        stage["cpu_s_per_1k"] = round(1000 * stage["cpu_s"] / count, 3)


def size_role_peaks(result: dict[str, Any]) -> dict[str, float]:
    """Peak RSS MB of each role in each stage and in the feed run: "crops: ray worker"."""
    parts = [*result["stages"], {"stage": "feed", **result.get("feed", {})}]
    return {f"{part['stage']}: {role}": mb
            for part in parts for role, mb in part.get("peak_rss_mb", {}).items()}  # fmt: skip


# --------------------------------------------------------------------------- goals
@dataclass(frozen=True)
class Goal:
    """One closing line: the figure, the goal, and whether it holds (None: not measurable)."""

    name: str
    measured: str
    goal: str
    passed: bool | None
    note: str = ""

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "N/A"}[self.passed]
        return f"{self.name}: {self.measured} (goal {self.goal}) {verdict}{self.note}"


def full_size_note(results: list[dict[str, Any]]) -> str:
    """For goals of the full size: say at which size they were judged when it was not run."""
    largest = results[-1]
    return "" if largest["full"] else f" at {largest['size']}; not run at full size"


def rate_goal(results: list[dict[str, Any]], stage: str) -> Goal:
    """A stage's seconds per 1k instances at the largest size against the smallest's."""
    small = stage_of(results[0], stage)["stage_s_per_1k"]
    large = stage_of(results[-1], stage)["stage_s_per_1k"]
    measured = f"{large:.2f} s/1k at {results[-1]['size']}"
    if len(results) == 1:
        return Goal(f"{stage} per-instance cost", measured, f"<= {RATE_GOAL}x", None,
                    " (one size run)")  # fmt: skip
    ratio = large / small if small > 0 else float("inf")
    measured += f" vs {small:.2f} at {results[0]['size']} ({ratio:.2f}x)"
    return Goal(f"{stage} per-instance cost", measured, f"<= {RATE_GOAL}x", ratio <= RATE_GOAL)


def rss_goal(results: list[dict[str, Any]]) -> Goal:
    """Every role's peak RSS at the largest size against the smallest's, and absolute; per
    stage, so that a role that grows in one stage is not hidden by a bigger one elsewhere."""
    small, large = size_role_peaks(results[0]), size_role_peaks(results[-1])
    biggest = max(large, key=large.__getitem__)
    measured = f"largest {biggest} {large[biggest]:.0f} MB"
    passed = large[biggest] < RSS_LIMIT_MB
    note = full_size_note(results)
    ratios = {role: large[role] / small[role] for role in large if small.get(role, 0) > 0}
    if len(results) > 1 and ratios:
        worst = max(ratios, key=ratios.__getitem__)
        measured = (f"worst growth {worst} {ratios[worst]:.2f}x ({small[worst]:.0f} -> "
                    f"{large[worst]:.0f} MB); {measured}")  # fmt: skip
        own = {role: ratio for role, ratio in ratios.items() if not role.endswith(": dvc")}
        if own and worst not in own:  # DVC's tool process hides how the project's own grow
            mine = max(own, key=own.__getitem__)
            measured += f"; worst sdpose process {mine} {own[mine]:.2f}x"
        passed = passed and ratios[worst] <= RSS_GROWTH_GOAL
    else:
        note += " (one size run: growth not measured)"
    goal = f"<= {RSS_GROWTH_GOAL}x and < {RSS_LIMIT_MB / 1024:.0f} GiB per role"
    return Goal("peak RSS per role", measured, goal, passed, note)


def feed_goal(results: list[dict[str, Any]]) -> Goal:
    """The streaming feed's samples/s over the sdpose-t step's at the largest size."""
    largest = results[-1]
    feed, step = largest["feed"]["samples_per_s"], largest["step"]["samples_per_s"]
    ratio = feed / step if step > 0 else float("inf")
    measured = f"{ratio:.1f}x ({feed:.1f} vs {step:.1f} samples/s)"
    return Goal("feed vs sdpose-t step", measured, f">= {FEED_GOAL:.0f}x", ratio >= FEED_GOAL,
                full_size_note(results))  # fmt: skip


def status_goal(results: list[dict[str, Any]]) -> Goal:
    """`dvc status` on the finished outputs of the largest size."""
    seconds = results[-1]["dvc_status_s"]
    return Goal("dvc status", f"{seconds:.1f} s", f"< {STATUS_GOAL_S:.0f} s",
                seconds < STATUS_GOAL_S, full_size_note(results))  # fmt: skip


def bad_record_goal(results: list[dict[str, Any]]) -> Goal:
    """One corrupt train record at the largest size: reported and skipped, the rest kept,
    one pass (its prepare within 1.25x of the clean one), strict names it."""
    largest = results[-1]
    found = largest["bad_record"]
    clean_s = found["clean_wall_s"]  # the same data, clean, run just before it
    ratio = found["wall_s"] / clean_s if clean_s > 0 else float("inf")
    lost = found["kept_clean"] - found["kept"]
    measured = (
        f"record {found['ann_id']} (of {found['kept_clean']} kept) reported {found['reported']}, "
        f"{lost} row lost, {ratio:.2f}x the clean prepare's time, strict exit "
        f"{found['strict_exit']} naming it {found['strict_named']}"
    )
    passed = found["reported"] and lost == 1 and ratio <= RATE_GOAL and found["strict_named"]
    goal = f"reported, 1 row lost, <= {RATE_GOAL}x (one pass), strict exit 2 naming it"
    return Goal("corrupt record", measured, goal, passed, full_size_note(results))


def goals(results: list[dict[str, Any]]) -> list[Goal]:
    return [rate_goal(results, "prepare"), rate_goal(results, "crops"), rss_goal(results),
            feed_goal(results), status_goal(results), bad_record_goal(results)]  # fmt: skip


def stage_of(result: dict[str, Any], stage: str) -> dict[str, Any]:
    return next(part for part in result["stages"] if part["stage"] == stage)


# --------------------------------------------------------------------------- a size
def size_params(size: Size) -> dict[str, Any]:
    """params.yaml for a size: the project's, with the COCO-size synth set and sdpose-t."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synth"].update(COCO_SIZE, train_images=size.train_images, val_images=size.val_images)
    params["model"]["preset"] = PRESET
    return params


def setup_workdir(workdir: Path, size: Size, env: dict[str, str]) -> None:
    """A fresh git + DVC repo with the project's dvc.yaml, code (DVC hashes it as the
    stages' deps) and the size's params.yaml, as tests/integration/test_dvc_prepare.py."""
    workdir.mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", workdir / "dvc.yaml")
    shutil.copytree(REPO / "sdpose", workdir / "sdpose",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (workdir / "params.yaml").write_text(yaml.safe_dump(size_params(size), sort_keys=False))
    for args in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["dvc", "config", "core.check_update", "false"],  # no updater daemon mid-stage
    ):
        run_quiet(args, workdir, env)


def measure_stage(stage: str, workdir: Path, env: dict[str, str], logs: Path,
                  interval: float) -> dict[str, Any]:  # fmt: skip
    """`dvc repro <stage>` (its upstream stages are up to date), sampled; its figures."""
    cache = workdir / ".dvc" / "cache"
    cache_before = dir_bytes(cache)
    run = run_measured(["dvc", "repro", stage], workdir, env, logs / f"{stage}.log", interval)
    if f"Running stage '{stage}'" not in run.output:
        raise RuntimeError(f"dvc repro {stage} did not run the stage:\n{run.output[-2000:]}")
    return {
        "stage": stage,
        **stage_figures(run),
        "out_bytes": dir_bytes(workdir / OUTPUTS[stage]),
        "cache_growth_bytes": dir_bytes(cache) - cache_before,
    }


def run_stages(size: Size, workdir: Path, env: dict[str, str], logs: Path,
               interval: float) -> list[dict[str, Any]]:  # fmt: skip
    """Set up the size's repo and run synth, prepare and crops, each printed as it ends."""
    setup_workdir(workdir, size, env)
    stages = []
    for stage in STAGES:
        stages.append(measure_stage(stage, workdir, env, logs, interval))
        print(stage_progress(size, stages[-1]), flush=True)
    add_rates(stages, stage_instances(workdir))
    (workdir / RESULT_FILE).write_text(json.dumps(stages, indent=2) + "\n")
    return stages


def reused_stages(workdir: Path, env: dict[str, str]) -> list[dict[str, Any]] | None:
    """The stage figures of an earlier run whose outputs are complete and up to date."""
    if not (workdir / RESULT_FILE).is_file():
        return None
    try:
        _, output = run_quiet(["dvc", "status", "crops"], workdir, env)
    except RuntimeError:
        return None
    if "Data and pipelines are up to date." not in output:
        return None
    return json.loads((workdir / RESULT_FILE).read_text())


def dvc_checks(workdir: Path, env: dict[str, str]) -> dict[str, float]:
    """`dvc status` (of every stage, as a user types it) and a no-op `dvc repro crops` on
    the finished outputs, timed."""
    status_s, _ = run_quiet(["dvc", "status"], workdir, env)
    noop_s, output = run_quiet(["dvc", "repro", "crops"], workdir, env)
    if "Running stage" in output or "Stage 'crops' didn't change, skipping" not in output:
        raise RuntimeError(f"the no-op `dvc repro crops` was not a no-op:\n{output[-2000:]}")
    return {"dvc_status_s": round(status_s, 2), "noop_repro_s": round(noop_s, 2)}


def measure_child(kind: str, workdir: Path, args: argparse.Namespace, env: dict[str, str],
                  logs: Path) -> dict[str, Any]:  # fmt: skip
    """A fresh `scale.py --child <kind>` process, sampled: its result and memory figures."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind,
               "--workdir", str(workdir), "--feed-samples", str(args.feed_samples)]  # fmt: skip
    run = run_measured(command, REPO, env, logs / f"{kind}.log", args.interval)
    return {**json_line(run.output), "child_wall_s": round(run.wall_s, 2),
            **memory_figures(run.book)}  # fmt: skip


def run_size(size: Size, root: Path, args: argparse.Namespace, smallest: bool) -> dict[str, Any]:
    """Every measurement of one size; the train slice only at the smallest."""
    started = time.perf_counter()
    workdir, logs = root / f"size-{size.slug}", root / "logs" / size.slug
    env = stage_env(workdir)
    stages = reused_stages(workdir, env) if args.reuse else None
    if stages is not None:
        print(f"{size.label}: reusing the finished stages in {workdir}", flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        stages = run_stages(size, workdir, env, logs, args.interval)
    result = {"size": size.label, "fraction": float(size.fraction), "full": size.full,
              "train_images": size.train_images, "val_images": size.val_images,
              "workdir": str(workdir), "stages": stages, **dvc_checks(workdir, env)}  # fmt: skip
    print(size_table(result), flush=True)
    result["bad_record"] = bad_record_check(workdir, root, env, logs, args.interval)
    print(bad_record_line(size, result["bad_record"]), flush=True)
    result["feed"] = measure_child("feed", workdir, args, env, logs)
    result["step"] = measure_child("step", workdir, args, env, logs)
    print(feed_lines(result), flush=True)
    if smallest:
        result["train"] = measure_train(workdir, root / "train-slice", args, env, logs)
        print(train_line(result["train"]), flush=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(f"{size.label}: done in {result['seconds']:.0f} s", flush=True)
    return result


# --------------------------------------------------------------------------- bad record
def corrupt_one_record(source: Path, dest: Path) -> int:
    """Copy a COCO file with the keypoints of the annotation nearest its middle made
    invalid (a 52nd value, "x"); returns that annotation's id."""
    text = source.read_bytes()
    start = text.index(b'"annotations":[')
    at = text.index(b'"keypoints":[', start + (len(text) - start) // 2)
    ann_id = int(text[text.index(b',"id":', at) + 6 :].split(b"}", 1)[0].split(b",", 1)[0])
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(text[:at] + b'"keypoints":["x",' + text[at + len(b'"keypoints":[') :])
    return ann_id


def warm_page_cache(roots: list[Path], chunk: int = 8 * MB) -> int:
    """Read every file under `roots` once and drop the bytes, so that the next reader finds
    them in the page cache; returns the bytes read."""
    total = 0
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                with path.open("rb") as handle:
                    while block := handle.read(chunk):
                        total += len(block)
    return total


def bad_record_check(workdir: Path, root: Path, env: dict[str, str], logs: Path,
                     interval: float) -> dict[str, Any]:  # fmt: skip
    """`sdpose prepare` on the size's data with one corrupt train record, then strict.

    The record must be reported by id and skipped, every other kept row kept, in one
    pass (timed against a clean prepare of the same data run just before it, both with
    the inputs read into the page cache first); strict mode must exit 2 naming the file
    and the record.
    """
    bad = root / "bad-record"
    shutil.rmtree(bad, ignore_errors=True)
    raw = workdir / "data" / "raw" / "synth"
    copy = bad / "raw"
    (copy / "annotations").mkdir(parents=True)
    (copy / "images").symlink_to(raw / "images")
    val = "annotations/person_keypoints_val.json"
    (copy / val).symlink_to(raw / val)
    train = copy / "annotations" / "person_keypoints_train.json"
    train.symlink_to(raw / "annotations" / "person_keypoints_train.json")
    command = ["sdpose", "prepare", "--set", f"data.root={copy}"]
    # the clean file first, then the corrupt one, both from a warm page cache: a cold first
    # read (59k images at full size) would flatter the ratio
    warm_page_cache([raw])
    clean_run = run_measured(command, bad, env, logs / "bad-record-clean.log", interval)
    clean = json.loads((bad / "data" / "prepared" / "report.json").read_text())["splits"]
    train.unlink()
    ann_id = corrupt_one_record(raw / "annotations" / "person_keypoints_train.json", train)
    run = run_measured(command, bad, env, logs / "bad-record.log", interval)
    report = json.loads((bad / "data" / "prepared" / "report.json").read_text())["splits"]
    skipped = report["train"]["skipped"].get("bad_keypoints", {})
    started = time.perf_counter()
    strict = subprocess.run([*command, "--set", "data.strict=true"], cwd=bad, env=env,
                            capture_output=True, text=True, timeout=7200)  # fmt: skip
    strict_s = time.perf_counter() - started
    named = strict.returncode == 2 and f"annotation {ann_id} " in strict.stderr
    figures = {
        "ann_id": ann_id,
        "reported": skipped.get("ids") == [ann_id],
        "kept": report["train"]["kept"],
        "kept_clean": clean["train"]["kept"],
        "wall_s": round(run.wall_s, 2),
        "clean_wall_s": round(clean_run.wall_s, 2),
        "strict_exit": strict.returncode,
        "strict_named": named,
        "strict_s": round(strict_s, 2),
        "strict_message": strict.stderr.strip().splitlines()[-1][:300] if strict.stderr else "",
        "peak_rss_mb": memory_figures(run.book)["peak_rss_mb"],
    }
    shutil.rmtree(bad, ignore_errors=True)
    return figures


def bad_record_line(size: Size, found: dict[str, Any]) -> str:
    lost = found["kept_clean"] - found["kept"]
    clean_s = found["clean_wall_s"]
    return (
        f"{size.label} corrupt record {found['ann_id']}: reported {found['reported']}, "
        f"{lost} row(s) lost of {found['kept_clean']}, prepare {found['wall_s']:.1f} s (clean "
        f"{clean_s:.1f} s, {found['wall_s'] / max(clean_s, 1e-9):.2f}x: one pass); strict: "
        f"exit {found['strict_exit']}, names it {found['strict_named']}"
    )


# --------------------------------------------------------------------------- train slice
def make_train_slice(source: Path, dest: Path, rows: int) -> dict[str, Any]:
    """A workdir with the first `rows` train crops, the first val shard, the val
    annotations (training scores AP against them) and a summary.json for them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sdpose.core.paths import split_paths
    from sdpose.data.crops import parquet_write_options

    shutil.rmtree(dest, ignore_errors=True)
    crops = dest / OUTPUTS["crops"]
    (crops / "train").mkdir(parents=True)
    (crops / "val").mkdir(parents=True)
    shutil.copy(source / "params.yaml", dest / "params.yaml")
    summary = json.loads((source / OUTPUTS["crops"] / "summary.json").read_text())
    annotations, _ = split_paths("synth", data_root(source), "val")
    (dest / annotations).parent.mkdir(parents=True)
    shutil.copy(source / annotations, dest / annotations)
    tables = []
    for shard in sorted((source / OUTPUTS["crops"] / "train").glob("part-*.parquet")):
        tables.append(pq.read_table(shard))
        if sum(table.num_rows for table in tables) >= rows:
            break
    train = crops / "train" / "part-00000-0.parquet"
    pq.write_table(pa.concat_tables(tables).slice(0, rows), train,
                   **parquet_write_options(summary["encoding"]))  # fmt: skip
    val_shard = sorted((source / OUTPUTS["crops"] / "val").glob("part-*.parquet"))[0]
    shutil.copy(val_shard, crops / "val" / val_shard.name)
    shards = {split: sorted((crops / split).glob("part-*.parquet")) for split in ("train", "val")}
    sliced = slice_summary(summary, shards)
    (crops / "summary.json").write_text(json.dumps(sliced, indent=2) + "\n")
    return sliced


def data_root(workdir: Path) -> str:
    """`data.root` of a workdir's params.yaml."""
    return yaml.safe_load((workdir / "params.yaml").read_text())["data"]["root"]


def slice_summary(summary: dict[str, Any], shards: dict[str, list[Path]]) -> dict[str, Any]:
    """The crops summary rewritten for the slice's shards: same keys, its rows and bytes."""
    import pyarrow.parquet as pq

    splits = {}
    for split, paths in shards.items():
        splits[split] = {"rows": sum(pq.ParquetFile(path).metadata.num_rows for path in paths),
                         "shards": len(paths), "bytes": sum(p.stat().st_size for p in paths),
                         "skipped_rows": 0, "skipped_by_kind": {}, "skipped": []}  # fmt: skip
    rows = sum(split["rows"] for split in splits.values())
    return {**summary, "splits": splits, "rows": rows}


def measure_train(source: Path, workdir: Path, args: argparse.Namespace, env: dict[str, str],
                  logs: Path) -> dict[str, Any]:  # fmt: skip
    """One epoch of `sdpose train` of sdpose-t from scratch on the slice, sampled."""
    sliced = make_train_slice(source, workdir, args.train_rows)
    command = ["sdpose", "train", "--set", f"model.preset={PRESET}", "--set", "train.init=scratch",
               "--set", "train.epochs=1"]  # fmt: skip
    run = run_measured(command, workdir, env, logs / "train.log", args.interval)
    metrics = json.loads((workdir / "metrics" / "train.json").read_text())
    with (workdir / "metrics" / "train_history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    return {"train_rows": sliced["splits"]["train"]["rows"],
            "val_rows": sliced["splits"]["val"]["rows"], "wall_s": round(run.wall_s, 2),
            "samples_per_s": round(float(metrics["samples_per_s"]), 2),
            "epoch_time_s": round(sum(float(row["epoch_time_s"]) for row in history), 2),
            "val_time_s": round(sum(float(row.get("val_time_s") or 0) for row in history), 2),
            "cpu_s": round(run.book.cpu_seconds(), 2), **memory_figures(run.book)}  # fmt: skip


# --------------------------------------------------------------------------- children
def feed_child(workdir: Path, samples: int) -> dict[str, Any]:
    """In a fresh process: `samples` streamed train samples after a warm-up, Ray on CPUS;
    then a pass whose first PACED_BATCHES batches are taken at a trainer's pace (PACE_S
    each), so that the object store peak shows the feed's read-ahead against its budget
    (`ray.feed_memory_mb`) rather than a consumer that empties it at once."""
    import ray

    from sdpose.config import load_params
    from sdpose.data import feed

    feed.CACHE_BYTES = 0  # the streaming path at every size, never the object-store cache
    params = load_params(workdir / "params.yaml", {"model.preset": PRESET})
    warmup = FEED_WARMUP_BATCHES * FEED_BATCH
    ray.init(address="local", num_cpus=CPUS, include_dashboard=False, logging_level="WARNING")
    try:
        sizes = feed_batches(feed.train_dataset(params, workdir, 0), warmup + samples)
        for _ in range(FEED_WARMUP_BATCHES):
            next(sizes)
        with Meter() as meter:
            counted = sum(sizes)
        paced = feed_batches(feed.train_dataset(params, workdir, 1), PACED_LIMIT)
        for index, _ in enumerate(paced):  # a trainer's pace: the feed reads ahead meanwhile
            if index < PACED_BATCHES:
                time.sleep(PACE_S)
    finally:
        ray.shutdown()
    return {"samples": counted, "samples_per_s": round(counted / meter.wall, 2),
            "feed_memory_mb": params.ray.feed_memory_mb,
            "cpu_ms_per_sample": round(1000 * meter.cpu / counted, 2),
            "wall_s": round(meter.wall, 2), "cpu_s": round(meter.cpu, 2),
            "streaming": True}  # fmt: skip


def feed_batches(dataset: Any, total: int) -> Iterator[int]:
    """Batch sizes of `total` samples over as many passes as that takes, each pass run to
    its end (`limit`): a pass left midway keeps Ray Data threads that fail after shutdown."""
    left = total
    while left > 0:
        before = left
        for batch in dataset.limit(left).iter_torch_batches(batch_size=FEED_BATCH):
            left -= len(batch["ann_id"])
            yield len(batch["ann_id"])
        if left == before:
            raise RuntimeError("the train feed yielded no samples")


def step_child() -> dict[str, Any]:
    """In a fresh process: the sdpose-t training step's rate (measure.training_meter)."""
    meter = training_meter(PRESET, FEED_BATCH, STEP_STEPS, CPUS)
    samples = FEED_BATCH * STEP_STEPS
    return {"samples_per_s": round(samples / meter.wall, 2),
            "cpu_ms_per_sample": round(1000 * meter.cpu / samples, 2),
            "wall_s": round(meter.wall, 2), "cpu_s": round(meter.cpu, 2)}  # fmt: skip


# --------------------------------------------------------------------------- printing
def stage_progress(size: Size, stage: dict[str, Any]) -> str:
    """One line as a stage finishes: times, CPU, bytes and the largest process."""
    roles = stage["peak_rss_mb"]
    biggest = max(roles, key=roles.__getitem__)
    return (f"{size.label} {stage['stage']:<8} dvc repro {stage['repro_wall_s']:7.1f} s "
            f"(sdpose {stage['stage_wall_s']:.1f} s, DVC {stage['dvc_s']:.1f} s), CPU "
            f"{stage['cpu_s']:.1f} s, out {stage['out_bytes'] / MB:.0f} MB, cache +"
            f"{stage['cache_growth_bytes'] / MB:.0f} MB, largest RSS {biggest} "
            f"({stage['peak_rss_process'][biggest]}) {roles[biggest]:.0f} MB")  # fmt: skip


def size_table(result: dict[str, Any]) -> str:
    """A size's stages: per-1k costs, bytes, Ray's store and spill, peak RSS per role."""
    title = f"{result['size']} ({result['train_images']} + {result['val_images']} images):"
    lines = [title, f"  {'stage':<8}{'inst':>8}{'repro s':>9}{'stage s':>9}{'DVC s':>7}"
                    f"{'s/1k':>7}{'CPU s/1k':>9}{'out MB':>8}{'cache+MB':>9}{'store MB':>9}"
                    f"{'spill MB':>9}"]  # fmt: skip
    for s in result["stages"]:
        lines.append(f"  {s['stage']:<8}{s['instances']:>8}{s['repro_wall_s']:>9.1f}"
                     f"{s['stage_wall_s']:>9.1f}{s['dvc_s']:>7.1f}{s['stage_s_per_1k']:>7.2f}"
                     f"{s['cpu_s_per_1k']:>9.2f}{s['out_bytes'] / MB:>8.0f}"
                     f"{s['cache_growth_bytes'] / MB:>9.0f}{s['store_peak_mb']:>9.0f}"
                     f"{s['spill_peak_mb']:>9.0f}")  # fmt: skip
    lines.append(rss_table(result["stages"]))
    lines.append(f"  dvc status {result['dvc_status_s']:.1f} s; no-op dvc repro crops "
                 f"{result['noop_repro_s']:.1f} s (nothing changed)")  # fmt: skip
    return "\n".join(lines)


def rss_table(parts: list[dict[str, Any]], label: str = "stage") -> str:
    """Peak RSS MB per role (columns) of each stage or run (rows)."""
    header = f"  {'peak RSS MB ' + label:<20}" + "".join(f"{role:>15}" for role in ROLES)
    rows = [f"  {part.get('stage', part.get('name', '')):<20}"
            + "".join(f"{part['peak_rss_mb'].get(role, 0):>15.0f}" for role in ROLES)
            for part in parts]  # fmt: skip
    return "\n".join([header, *rows])


def feed_lines(result: dict[str, Any]) -> str:
    feed, step = result["feed"], result["step"]
    return "\n".join([
        f"{result['size']} feed (streaming forced: feed.CACHE_BYTES = 0; {CPUS} CPUs): "
        f"{feed['samples_per_s']:.1f} samples/s, {feed['cpu_ms_per_sample']:.1f} CPU ms/sample "
        f"over {feed['samples']} samples; store peak {feed['store_peak_mb']:.0f} MB",
        f"{result['size']} sdpose-t step (batch {FEED_BATCH}, {CPUS} threads): "
        f"{step['samples_per_s']:.1f} samples/s, {step['cpu_ms_per_sample']:.1f} CPU ms/sample; "
        f"feed/step {feed['samples_per_s'] / step['samples_per_s']:.1f}x",
        rss_table([{"name": "feed", **feed}, {"name": "step", **step}], "run"),
    ])  # fmt: skip


def train_line(train: dict[str, Any]) -> str:
    return "\n".join([
        f"sdpose train, {PRESET} from scratch, 1 epoch of {train['train_rows']} crops "
        f"(val {train['val_rows']}): {train['wall_s']:.1f} s wall, {train['samples_per_s']:.1f} "
        f"samples/s (epoch {train['epoch_time_s']:.1f} s, validation {train['val_time_s']:.1f} s), "
        f"CPU {train['cpu_s']:.0f} s",
        rss_table([{"name": "train", **train}], "run"),
    ])  # fmt: skip


# --------------------------------------------------------------------------- main
def default_out() -> Path:
    return REPO / "reports" / "scale.json"


def write_report(out: Path, header: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """Every figure so far as JSON (rewritten after each size: a long run keeps its part)."""
    report = {**header, "sizes": results}
    if results:
        report["goals"] = [asdict(goal) | {"line": goal.line()} for goal in goals(results)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default="1/16,1/4",
        help="fractions of the COCO-size set (the full run: 1/16,1/4,1)",
    )
    parser.add_argument("--root", type=Path, help="where the workdirs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the workdirs at the end")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --root: skip the stages of a size already finished there",
    )
    parser.add_argument("--out", type=Path, default=default_out(), help="the JSON report")
    parser.add_argument("--feed-samples", type=int, default=2048)
    parser.add_argument("--train-rows", type=int, default=256, help="crops in the train slice")
    parser.add_argument("--interval", type=float, default=0.5, help="sampling period, s")
    parser.add_argument("--child", choices=("feed", "step"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_child(args: argparse.Namespace) -> None:
    result = feed_child(args.workdir, args.feed_samples) if args.child == "feed" else step_child()
    print(json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} cores (other work skews every rate)")
    root = args.root or Path(tempfile.mkdtemp(prefix="sdpose-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    labels = ", ".join(size.label for size in args.sizes)
    print(f"sizes {labels} of {COCO_TRAIN_IMAGES} + {COCO_VAL_IMAGES} images (640x480, up to "
          f"5 people); crops for {PRESET}; workdirs in {root}", flush=True)  # fmt: skip
    header = {"load_average": load, "cores": os.cpu_count(), "root": str(root),
              "feed_cache_bytes": 0, "sizes_run": labels}  # fmt: skip
    results: list[dict[str, Any]] = []
    try:
        for index, size in enumerate(args.sizes):
            results.append(run_size(size, root, args, smallest=index == 0))
            write_report(args.out, header, results)
    except BaseException:
        print(f"stopped; workdirs and logs kept in {root}", file=sys.stderr)
        raise
    for goal in goals(results):
        print(goal.line())
    print(f"figures in {args.out}")
    if not args.keep:
        remove_workdirs(root, args.sizes, owned=args.root is None)


def remove_workdirs(root: Path, sizes: list[Size], owned: bool) -> None:
    """Remove what this run made: the whole temp root, or only its folders in a --root."""
    if owned:
        shutil.rmtree(root, ignore_errors=True)
        return
    for name in [*(f"size-{size.slug}" for size in sizes), "train-slice", "logs"]:
        shutil.rmtree(root / name, ignore_errors=True)


if __name__ == "__main__":
    main()
