"""DVC's own memory against the number of files it tracks, with nothing of sdpose around it.

`bench/scale.py` sees the `dvc` process grow from 83 MB at 1/16 of the COCO-size set to
328 MB at full size while every sdpose process stays within 1.25x. This bench tells whether
that growth is DVC's: a bare git + DVC repository, one directory of N tiny files, and the
peak RSS of `dvc add` and of `dvc status` on it, per N, with the per-file slope and what it
means for COCO's own image folders.

    python bench/dvc_files.py                      # 3,684 / 14,736 / 58,945 files, ~30 s
    python bench/dvc_files.py --counts 3684,123287  # COCO train2017 + val2017's file count
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from scale import stage_env

COCO_SIZE_IMAGES = 58_945  # the COCO-size synthetic set: 56,599 train + 2,346 val images
COCO_IMAGE_FILES = 123_287  # COCO's train2017 (118,287) + val2017 (5,000) folders
PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)\n"
)


@dataclass(frozen=True)
class Tracked:
    """One directory size: DVC's peak RSS (MB) and wall seconds for add and for status."""

    files: int
    add_mb: float
    add_s: float
    status_mb: float
    status_s: float


def peak_rss(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Peak RSS (MB) of a command's largest process and its wall seconds.

    A fresh interpreter runs it, so RUSAGE_CHILDREN holds this command's peak alone."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, *command], cwd=cwd, check=True,
                          capture_output=True, text=True, env=env)  # fmt: skip
    wall = time.perf_counter() - start
    kilobytes, code = done.stdout.split()
    if code != "0":
        raise RuntimeError(f"{' '.join(command)} in {cwd} exited {code}")
    return int(kilobytes) / 1024, wall


def track(files: int, root: Path) -> Tracked:
    """`dvc add` then `dvc status` of a fresh repository holding `files` files of 64 bytes."""
    repo = root / f"files-{files}"
    images = repo / "images"
    images.mkdir(parents=True)
    for i in range(files):
        (images / f"{i:012d}.jpg").write_bytes(os.urandom(64))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    env = stage_env(repo)  # the venv's dvc, no analytics, DVC's state inside the repo
    subprocess.run(["dvc", "init", "-q"], cwd=repo, check=True, env=env)
    add_mb, add_s = peak_rss(["dvc", "add", "-q", "images"], repo, env)
    status_mb, status_s = peak_rss(["dvc", "status", "-q"], repo, env)
    counted = re.search(r"nfiles: (\d+)", (repo / "images.dvc").read_text())
    if counted is None or int(counted.group(1)) != files:
        raise RuntimeError(f"{repo / 'images.dvc'}: DVC did not track the {files} files")
    shutil.rmtree(repo)
    return Tracked(files, add_mb, add_s, status_mb, status_s)


def slope_kb(rows: list[Tracked], field: str) -> float:
    """KB of DVC's peak RSS per tracked file, between the smallest and largest count."""
    small, large = rows[0], rows[-1]
    return (getattr(large, field) - getattr(small, field)) * 1024 / (large.files - small.files)


def report(rows: list[Tracked]) -> list[str]:
    """The table, and the per-file slope with COCO's folders where there are two counts."""
    lines = [f"{'files':>8} {'add MB':>7} {'add s':>6} {'status MB':>9} {'status s':>8}"]
    lines += [f"{row.files:>8,} {row.add_mb:>7.0f} {row.add_s:>6.1f} {row.status_mb:>9.0f} "
              f"{row.status_s:>8.1f}" for row in rows]  # fmt: skip
    if len(rows) > 1:
        add, status = slope_kb(rows, "add_mb"), slope_kb(rows, "status_mb")
        coco = rows[0].status_mb + status * (COCO_IMAGE_FILES - rows[0].files) / 1024
        lines.append(
            f"per tracked file: dvc add {add:.1f} KB, dvc status {status:.1f} KB; "
            f"{rows[-1].files / rows[0].files:.0f}x the files gives "
            f"{rows[-1].status_mb / rows[0].status_mb:.2f}x dvc status's peak RSS"
        )
        lines.append(f"COCO's image folders ({COCO_IMAGE_FILES:,} files): dvc status about "
                     f"{coco:.0f} MB")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> list[Tracked]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sizes = [COCO_SIZE_IMAGES // 16, COCO_SIZE_IMAGES // 4, COCO_SIZE_IMAGES]
    parser.add_argument(
        "--counts",
        default=",".join(map(str, sizes)),
        help="numbers of files in the tracked directory, comma-separated",
    )
    args = parser.parse_args(argv)  # fmt: skip
    counts = sorted(int(count) for count in args.counts.split(","))
    with tempfile.TemporaryDirectory(prefix="sdpose-dvc-files-") as tmp:
        rows = [track(count, Path(tmp)) for count in counts]
    for line in report(rows):
        print(line)
    return rows


if __name__ == "__main__":
    main()
