"""`sdpose pretrained`: ship the weights a training run made, with their model card.

The project's pretrained weights are made by its own pipeline (docs/pretrained.md): a
workdir with a large synthetic set, `sdpose synth | prepare | crops`, then one or more
`sdpose train` legs (a later leg starts from the shipped weights: `train.init: NAME`).
`sdpose pretrained ship NAME --workdir W` takes the leg in W and writes, into the package's
weights folder, the leg's best checkpoint, its card and the checksum in the index. The card
states the architecture and cost, the code version, every leg (iterations, wall time, data
seed and size, recipe, machine), and the student's AP measured here on three sets: W's own
val, a synthetic val drawn with another seed, and (with --coco) a real COCO sample.

`sdpose pretrained list` shows what the package ships (the commands: pipelines/commands.py).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sdpose.config import Params
from sdpose.core.paths import CROPS_DIR, TRAIN_HISTORY, TRAIN_METRICS, TRAIN_MODELS, split_paths
from sdpose.core.provenance import code_version
from sdpose.data.synth import generate_split
from sdpose.evaluation.heldout import heldout_ap
from sdpose.models.checkpoint import load_checkpoint
from sdpose.models.cost import model_info
from sdpose.models.pretrained import WEIGHTS_DIR, add_to_index, shipped
from sdpose.training.history import read_history_csv

HELDOUT_SEED = 2
AP_KEYS = ("AP", "AP50", "AP75", "AR", "instances")


def list_lines() -> list[str]:
    """One line per shipped set of weights: architecture, size, training, measured AP."""
    lines = []
    for name, entry in sorted(shipped().items()):
        card = entry.card()
        figures = ", ".join(f"{key} {value['AP']:.3f}" for key, value in card["ap"].items())
        iterations = sum(leg["iterations"] for leg in card.get("legs", []))
        architecture = card["architecture"]
        lines.append(
            f"{name}: {architecture['name']} ({architecture['head']} head), "
            f"{card['params']:,} params, {iterations:,} iterations; AP {figures}"
        )
    return lines


def ship(
    name: str,
    workdir: Path,
    weights_dir: Path = WEIGHTS_DIR,
    heldout_seed: int = HELDOUT_SEED,
    heldout_images: int = 500,
    coco: Path | None = None,
    note: str = "",
) -> dict[str, Any]:
    """Measure the run's best student, write NAME.pt, NAME.json and the index entry."""
    workdir = Path(workdir).resolve()
    recorded = json.loads((workdir / TRAIN_MODELS / "config.json").read_text())
    params = Params.model_validate(recorded["params"])
    model, checkpoint = load_checkpoint(workdir / TRAIN_MODELS / "best.pt")
    legs = [*earlier_legs(name, params, weights_dir), leg_record(workdir, params, checkpoint, note)]
    card = {
        "name": name,
        "architecture": model.config.to_dict(),
        "params": model_info(model.config)["params"],
        "gflops": model_info(model.config)["gflops"],
        "codec": {
            "head": model.config.head,
            "sigma": params.train.sigma,
            "simcc_sigma": params.train.simcc_sigma,
            "simcc_beta": params.train.simcc_beta,
        },
        "legs": legs,
        "ap": measured_ap(model, params, workdir, heldout_seed, heldout_images, coco),
        "protocol": "student (one cycle), ground-truth boxes, flip test, "
        f"{params.evaluate.decode} decoding, rescoring and OKS-NMS, pycocotools",
        "shipped_with": code_version(),
    }
    weights_dir.mkdir(parents=True, exist_ok=True)
    target, card_path = weights_dir / f"{name}.pt", weights_dir / f"{name}.json"
    shutil.copyfile(workdir / TRAIN_MODELS / "best.pt", target)
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    add_to_index(weights_dir, name, target, card_path)
    return card


def earlier_legs(name: str, params: Params, weights_dir: Path) -> list[dict[str, Any]]:
    """The legs of the weights this leg continued from, when it started from `name`."""
    card_path = weights_dir / f"{name}.json"
    if params.train.init != name or not card_path.is_file():
        return []
    return json.loads(card_path.read_text()).get("legs", [])


def leg_record(workdir: Path, params: Params, checkpoint: dict, note: str) -> dict[str, Any]:
    """One training leg: what it started from, its budget and data, recipe and machine."""
    summary = json.loads((workdir / TRAIN_METRICS).read_text())
    history = read_history_csv(workdir / TRAIN_HISTORY)
    crops = json.loads((workdir / CROPS_DIR / "summary.json").read_text())
    return {
        "note": note,
        "init": params.train.init,
        "initial_student_ap": summary.get("initial_student_ap"),
        "epochs": summary["epochs"],
        "iterations": int(history[-1]["iterations"]),
        "best_epoch": summary["best_epoch"],
        "best_student_ap_during_training": summary["best_student_ap"],
        # every epoch's training and validation, across resumes; the last run's wall time
        # alone leaves out what came before a `--resume`
        "train_time_s": round(summary["train_time_s"], 1),
        "wall_time_s_last_run": round(summary["wall_time_s"], 1),
        "resumed_after_epoch": summary.get("resumed_after_epoch"),
        "samples_per_s": round(summary["samples_per_s"], 1),
        "code": summary.get("code"),
        "data": {
            "source": params.data.source,
            "synth": params.synth.model_dump(mode="json"),
            "train_crops": crops["splits"]["train"]["rows"],
            "val_crops": crops["splits"]["val"]["rows"],
        },
        "recipe": params.train.model_dump(mode="json", exclude={"augment", "max_failures"}),
        "augment": params.train.augment.model_dump(mode="json"),
        "machine": {
            "workers": params.ray.num_workers,
            "cpus": os.cpu_count(),
            "processor": cpu_model(),
            "gpu": params.ray.use_gpu,
        },
        "checkpoint_epoch": checkpoint.get("epoch"),
        "curve": curve(history),
    }


def curve(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """The leg's validation after every epoch: iterations, hours (training + validation),
    student and teacher AP on the run's own val."""
    elapsed, points = 0.0, []
    for row in history:
        elapsed += row["epoch_time_s"] + row.get("val_time_s", 0.0)
        points.append(
            {
                "epoch": int(row["epoch"]),
                "iterations": int(row["iterations"]),
                "hours": round(elapsed / 3600, 3),
                "student_ap": round(row["student_ap"], 4),
                "teacher_ap": round(row["teacher_ap"], 4),
            }
        )
    return points


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo on Linux), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measured_ap(
    model, params: Params, workdir: Path, seed: int, images: int, coco: Path | None
) -> dict[str, Any]:
    """The student's AP on the run's val, on a synthetic val of another seed, on COCO."""
    annotations, image_root = split_paths(params.data.source, params.data.root, "val")
    figures = {"own_val": _keep(heldout_ap(model, params, workdir / annotations,
                                           workdir / image_root))}  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        document = generate_split(
            "val", images, seed=seed, size=tuple(params.synth.image_size),
            max_people=params.synth.max_people, images_dir=Path(folder) / "images",
            workers=os.cpu_count() or 1, occluders=params.synth.occluders,
            clutter=params.synth.clutter,
        )  # fmt: skip
        heldout = Path(folder) / "person_keypoints_val.json"
        heldout.write_text(json.dumps(document))
        stats = heldout_ap(model, params, heldout, Path(folder) / "images")
        figures[f"synthetic_val_seed{seed}"] = _keep(stats) | {"images": images}
    if coco is not None:
        figures["coco_sample"] = _keep(heldout_ap(model, params, coco, coco.parent / "images"))
    return figures


def _keep(stats: dict[str, float]) -> dict[str, float]:
    return {key: round(float(stats[key]), 4) for key in AP_KEYS if key in stats}


def plot_curves(card: dict[str, Any], path: Path) -> Path:
    """Student AP on the run's own val against iterations and hours, every leg end to end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    done_iterations, done_hours = 0, 0.0
    for index, leg in enumerate(card["legs"], start=1):
        points = leg.get("curve") or []
        xs = [done_iterations + point["iterations"] for point in points]
        hours = [done_hours + point["hours"] for point in points]
        student = [point["student_ap"] for point in points]
        axes[0].plot(xs, student, "o-", markersize=3, label=f"leg {index}")
        axes[1].plot(hours, student, "o-", markersize=3, label=f"leg {index}")
        if points:
            done_iterations, done_hours = xs[-1], hours[-1]
    axes[0].set_xlabel("iterations (batch 32)")
    axes[1].set_xlabel("hours on the training machine (training + validation)")
    axes[0].set_ylabel("student AP, the run's synthetic val")
    for axis in axes:
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    figure.suptitle(f"{card['name']}: {card['architecture']['name']}, from scratch", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
