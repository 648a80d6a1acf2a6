"""reports/eval.md and its figures, from the `evaluate` stage's metrics.

Three pictures answer the paper's questions: does AP grow with the cycles (the teacher
beats the student, distillation closes the gap), what does accuracy cost (AP against
GFLOPs for the models, their all-cycles teachers and the tuning trials), and do the
predictions look right (val images with the student's skeletons drawn).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sdpose.core.keypoints import NUM_KEYPOINTS
from sdpose.core.paths import PREPARED_DIR, TUNE_METRICS, resolve
from sdpose.data.manifest import read_manifest
from sdpose.evaluation.visualize import draw_poses, image_grid

GRID_IMAGES = 8
STAT_COLUMNS = ("AP", "AP50", "AP75", "APm", "APl", "AR")


def tune_rows(workdir: Path) -> list[dict[str, Any]]:
    """Trials of metrics/tune.json that carry a student AP and GFLOPs ([] without tuning)."""
    path = Path(workdir) / TUNE_METRICS
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    rows = data if isinstance(data, list) else data.get("trials", data.get("rows", []))
    return [
        row
        for row in rows
        if isinstance(row, dict) and _number(row.get("student_ap")) and _number(row.get("gflops"))
    ]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def plot_ap_per_cycle(evaluation: dict[str, Any], path: Path) -> Path:
    import matplotlib  # lazy: matplotlib costs 0.6 s and picks its backend at import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib costs 0.6 s and picks its backend at import

    figure, axes = plt.subplots(figsize=(5, 3.5))
    for name, entry in evaluation["models"].items():
        cycles = [row["cycle"] for row in entry["per_cycle"]]
        axes.plot(
            cycles,
            [row["AP"] for row in entry["per_cycle"]],
            "o-",
            label=f"{name} ({entry['preset']})",
        )
        axes.set_xticks(cycles)
    axes.set_xlabel("cycle (1 = the deployed student)")
    axes.set_ylabel("COCO AP")
    axes.set_title("AP of every cycle")
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)


def plot_ap_vs_gflops(evaluation: dict[str, Any], trials: list[dict], path: Path) -> Path:
    import matplotlib  # lazy: matplotlib costs 0.6 s and picks its backend at import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib costs 0.6 s and picks its backend at import

    figure, axes = plt.subplots(figsize=(5.5, 4))
    if trials:
        axes.scatter(
            [t["gflops"] for t in trials],
            [t["student_ap"] for t in trials],
            s=18,
            c="0.6",
            label="tuning trials (student)",
        )
    for name, entry in evaluation["models"].items():
        student = axes.scatter(
            entry["gflops"],
            entry["student"]["AP"],
            s=60,
            zorder=3,
            label=f"{name} student ({entry['preset']})",
        )
        if entry["cycles"] > 1:
            axes.scatter(
                entry["gflops_train"],
                entry["teacher"]["AP"],
                s=60,
                zorder=3,
                facecolors="none",
                edgecolors=student.get_facecolor(),
                label=f"{name} all {entry['cycles']} cycles",
            )
    axes.set_xlabel("GFLOPs (multiply-adds of one student inference, at its input size)")
    axes.set_ylabel("COCO AP")
    axes.set_title("Accuracy against cost")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt  # lazy: matplotlib costs 0.6 s and picks its backend at import

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def prediction_grid(
    results: list[dict], workdir: Path, split: str, score_thr: float, path: Path
) -> Path | None:
    """Up to GRID_IMAGES val images with the student's predicted skeletons, as one PNG."""

    manifest = Path(workdir) / PREPARED_DIR / f"{split}.parquet"
    if not results or not manifest.is_file():
        return None
    table, image_root = read_manifest(manifest)
    image_root = resolve(workdir, image_root)
    files = dict(
        zip(
            table.column("image_id").to_pylist(), table.column("file_name").to_pylist(), strict=True
        )
    )
    tiles = []
    for image_id in sorted({r["image_id"] for r in results} & files.keys())[:GRID_IMAGES]:
        image = cv2.imread(str(image_root / files[image_id]), cv2.IMREAD_COLOR)
        if image is None:
            continue
        poses = [r["keypoints"] for r in results if r["image_id"] == image_id]
        poses = np.asarray(poses, dtype=np.float64).reshape(-1, NUM_KEYPOINTS, 3)
        tiles.append(draw_poses(image, poses, score_thr=score_thr))
    if not tiles:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image_grid(tiles, columns=4, cell=(320, 256)))
    return path


def write_report(
    evaluation: dict[str, Any], student_results: list[dict], workdir: Path, reports_dir: Path
) -> Path:
    """reports/eval.md with its tables and the three PNGs beside it; returns the md path."""
    trials = tune_rows(workdir)
    figures = {
        "Figure: AP per cycle": plot_ap_per_cycle(
            evaluation, reports_dir / "eval_ap_per_cycle.png"
        ),
        "Figure: AP against GFLOPs": plot_ap_vs_gflops(
            evaluation, trials, reports_dir / "eval_ap_vs_gflops.png"
        ),
    }
    grid = prediction_grid(
        student_results,
        workdir,
        evaluation["split"],
        evaluation["protocol"]["vis_thr"],
        reports_dir / "eval_predictions.png",
    )
    if grid:
        figures[f"Figure: val images, predictions of the {evaluation['best']} student"] = grid
    lines = _markdown(evaluation, trials, figures)
    path = reports_dir / "eval.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _markdown(evaluation: dict[str, Any], trials: list[dict], figures: dict[str, Path]) -> list:
    protocol = evaluation["protocol"]
    lines = [
        "# Evaluation",
        "",
        f"Val set `{evaluation['val_set']}`: {evaluation['instances']} instances, boxes: "
        f"{evaluation['boxes']}; flip test {protocol['flip_test']}, decoding "
        f"{protocol['decode']}, OKS-NMS {protocol['oks_thr']}. Best student: "
        f"**{evaluation['best']}** (AP {evaluation['student_ap']:.4f}).",
        "",
        "## Student (one cycle, what ships)",
        "",
        "| model | preset | cycles | params | GFLOPs | latency ms (b=1) | "
        + " | ".join(STAT_COLUMNS)
        + " |",
        "|" + " --- |" * (6 + len(STAT_COLUMNS)),
    ]
    for name, entry in evaluation["models"].items():
        stats = " | ".join(f"{entry['student'][key]:.4f}" for key in STAT_COLUMNS)
        lines.append(
            f"| {name} | {entry['preset']} | {entry['cycles']} | {entry['params']:,} | "
            f"{entry['gflops']:.3f} | {entry['latency_ms']['student_batch1']:.1f} | {stats} |"
        )
    lines += [
        "",
        "## AP of every cycle",
        "",
        "| model | cycle | AP | AP50 | AP75 | AR |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in evaluation["models"].items():
        for row in entry["per_cycle"]:
            lines.append(
                f"| {name} | {row['cycle']} | {row['AP']:.4f} | {row['AP50']:.4f} | "
                f"{row['AP75']:.4f} | {row['AR']:.4f} |"
            )
        lines.append(
            f"| {name}: all cycles | | latency {entry['latency_ms']['all_cycles_batch1']:.1f} ms"
            f" | GFLOPs {entry['gflops_train']:.3f} | | |"
        )
    if trials:
        lines += ["", f"Tuning trials with a student AP: {len(trials)} (grey in the plot)."]
    for title, figure in figures.items():
        lines += ["", f"## {title}", "", f"![{title}]({figure.name})"]
    return lines
