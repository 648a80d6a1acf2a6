"""bench/dvc_files.py: DVC's peak RSS per tracked file, on a real DVC."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dvc_files


def test_a_real_dvc_tracks_each_count_and_its_memory_is_read(capsys):
    rows = dvc_files.main(["--counts", "300,30"])
    assert [row.files for row in rows] == [30, 300]  # smallest first, each verified in .dvc
    assert all(row.add_mb > 20 and row.status_mb > 20 for row in rows)  # a Python process
    assert all(row.add_s > 0 and row.status_s > 0 for row in rows)
    printed = capsys.readouterr().out
    assert "per tracked file: dvc add" in printed and "COCO's image folders" in printed


def test_the_slope_is_per_file_between_the_ends():
    rows = [dvc_files.Tracked(1_000, 100.0, 1.0, 80.0, 0.5),
            dvc_files.Tracked(5_000, 90.0, 2.0, 85.0, 0.6),
            dvc_files.Tracked(11_000, 120.0, 3.0, 90.0, 0.7)]  # fmt: skip
    assert dvc_files.slope_kb(rows, "status_mb") == 10 * 1024 / 10_000
    assert dvc_files.slope_kb(rows, "add_mb") == 20 * 1024 / 10_000
    lines = dvc_files.report(rows)
    assert len(lines) == 1 + 3 + 2
    assert "11x the files gives 1.12x dvc status's peak RSS" in lines[4]
    assert dvc_files.report(rows[:1])[-1].lstrip().startswith("1,000")  # no slope from one
