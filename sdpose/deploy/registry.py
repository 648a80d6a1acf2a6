"""MLflow model registry of exported students: every export a version, the best the champion.

The `champion` alias is what deployments pull (`models:/sdpose-student@champion`), so it
moves only when a new version's student AP beats the champion's on the same val set: a
regression, or a number measured on other data, can never take the slot. Nor can a student
below `registry.min_ap`, even an empty slot: it is registered, tagged with why, not crowned.
The tracking store defaults to a SQLite file and the artifacts to a folder, both under the
workdir (or the project folder a DVC experiment's run names, `registry_root`), so a project
folder carries its own registry and nothing is set globally (no `mlflow.set_tracking_uri`):
every call builds its own client.

The int8 form travels with its fp32 student: it is an artifact of the same run, beside the
fp32 file in the version's `model/` folder (`load_onnx(..., form="int8")`), logged only when
the export's int8 gate passed it (`sdpose.export.int8_gate`: its AP within
`export.int8_max_ap_drop` of the fp32 file's, its heatmaps within `export.int8_rtol` of
PyTorch's). The registry stores that verdict (`Int8Verdict`), it never judges. Either way
the version's
`int8` tag says what happened and why. One version per trained student, not a second
registered model: the champion alias then picks fp32 and int8 together, and a deployment
never pairs an int8 file with another student's card.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from sdpose.config import ConfigError, Params
from sdpose.core.errors import InputError
from sdpose.core.paths import (
    CARD_NAME,
    EXPORT_DIR,
    INT8_NAME,
    ONNX_NAME,
    REGISTRY_DOWNLOADS,
    WEIGHTS_NAME,
)
from sdpose.mlflow_store import open_client, registry_root, tracking_uri

# mlflow is imported where it is used (`# lazy`): it costs 1.4 s at import, and predict and
# the training commands import this module without always opening the registry.
CHAMPION = "champion"
ARTIFACT_DIR = "model"  # run artifact folder holding the ONNX file and the model card
INT8_TAG = "int8"  # on every version: "registered" or why the int8 form is absent
NOT_CHAMPION_TAG = "not_champion"  # on a version refused by the min_ap gate: why


@dataclass(frozen=True)
class Int8Verdict:
    """What the export decided about its int8 file: stored with the version as given."""

    registered: bool  # the file is logged beside the fp32 one
    reason: str  # the version's int8 tag when not registered; the export's summary line
    path: Path | None = None  # the int8 file, when one was built
    ap: float | None = None  # its ONNX AP on the export's val set

    def record(self) -> dict[str, Any]:
        return {"registered": self.registered, "reason": self.reason}


NO_INT8 = Int8Verdict(False, "no int8 form was built")


@dataclass(frozen=True)
class ChampionScore:
    """The champion's AP as the export re-measured it on the new version's val set."""

    version: int
    ap: float


class RegistryError(InputError):
    """The registry cannot answer (unknown model or alias, missing artifact)."""


def _client(params: Params, workdir: Path):  # -> mlflow.MlflowClient
    from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException  # lazy

    uri = tracking_uri(params, workdir)
    try:
        return open_client(uri)
    except UnsupportedModelRegistryStoreURIException:  # a bad parameter, not a failure
        raise ConfigError(
            f"registry.tracking_uri: {params.registry.tracking_uri!r} is not a store MLflow "
            "can open; use sqlite:///FILE.db, a folder, or an http(s):// tracking server"
        ) from None


def _experiment_id(client, params: Params, workdir: Path) -> str:
    """The experiment, created with its artifacts under the workdir (not the process cwd)."""
    experiment = client.get_experiment_by_name(params.registry.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = (registry_root(workdir) / "mlartifacts").as_uri()
    return client.create_experiment(params.registry.experiment, artifact_location=artifacts)


def _float_tag(version, key: str) -> float | None:
    value = (version.tags or {}).get(key)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def current_champion(params: Params, workdir: Path, client=None):  # -> ModelVersion | None
    """The version holding the champion alias, or None (no model or no alias yet)."""
    from mlflow.exceptions import MlflowException  # lazy: see the note on mlflow

    client = client or _client(params, workdir)
    try:
        return client.get_model_version_by_alias(params.registry.model_name, CHAMPION)
    except MlflowException:
        return None


def register_student(
    params: Params,
    workdir: Path,
    onnx_path: Path,
    card: dict[str, Any],
    metrics: dict[str, float],
    val_set: str,
    champion_score: ChampionScore | None = None,
    int8: Int8Verdict = NO_INT8,
    weights: Path | None = None,
) -> dict[str, Any]:
    """Log a run with the ONNX file, card and metrics; register it; move the alias if better.

    `int8`: the export's verdict on its int8 file, logged beside the fp32 one if it passed.
    `weights`: the PyTorch checkpoint the student was exported from, logged as
    WEIGHTS_NAME so that `train.init: models:/...` can fine-tune from a version.

    `metrics["student_ap"]` is the comparison key and `val_set` a fingerprint of the data it
    was measured on. When the champion was measured on another val set, its AP means
    nothing here: `champion_score` (the export's re-measurement of the file
    `champion_to_rescore` named) replaces it if given for that champion, otherwise
    the champion stays (a version is never promoted on an incomparable number). Below
    `registry.min_ap` a version is registered and tagged `not_champion`, never promoted.
    Returns {version, student_ap, champion (bool), previous_champion, reason, int8}.
    """
    if "student_ap" not in metrics or not math.isfinite(metrics["student_ap"]):
        raise ValueError(f"metrics must hold a finite student_ap to register; got {metrics}")
    client = _client(params, workdir)
    name = params.registry.model_name
    files = {ONNX_NAME: onnx_path}
    if int8.registered and int8.path is not None:
        files[INT8_NAME] = int8.path
    if weights is not None:
        files[WEIGHTS_NAME] = weights
    run_id = _log_run(client, params, workdir, files, card, metrics, val_set)
    _ensure_registered_model(client, name)
    artifact_uri = client.get_run(run_id).info.artifact_uri
    tags = {"student_ap": repr(float(metrics["student_ap"])), "val_set": val_set}
    tags[INT8_TAG] = "registered" if int8.registered else int8.reason
    if int8.ap is not None:
        tags["int8_ap"] = repr(float(int8.ap))
    tags |= {key: str(card[key]) for key in ("preset", "cycles", "params", "gflops") if key in card}
    if (gate := _below_min_ap(params, metrics["student_ap"])) is not None:
        tags[NOT_CHAMPION_TAG] = gate  # so `sdpose registry list` can say why it is not champion
    version = client.create_model_version(
        name, f"{artifact_uri}/{ARTIFACT_DIR}", run_id=run_id, tags=tags
    )
    champion = current_champion(params, workdir, client)
    promote, reason, champion_ap = _should_promote(
        params, champion, metrics["student_ap"], val_set, champion_score
    )
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    return {
        "model_name": name,
        "version": int(version.version),
        "run_id": run_id,
        "student_ap": float(metrics["student_ap"]),
        "champion": promote,
        "previous_champion": int(champion.version) if champion else None,
        "previous_champion_ap": champion_ap,
        "reason": reason,
        "int8": int8.record(),
    }


def _should_promote(
    params: Params,
    champion,
    student_ap: float,
    val_set: str,
    champion_score: ChampionScore | None,
) -> tuple[bool, str, float | None]:
    """(promote, why, the champion's AP it was compared with: None if it was not)."""
    if (gate := _below_min_ap(params, student_ap)) is not None:
        # Checked first: no champion re-measurement is worth it for a version that cannot win.
        return False, f"student AP {student_ap:.4f} is {gate}: registered, not champion", None
    if champion is None:
        return True, f"no champion yet: student AP {student_ap:.4f} becomes the champion", None
    champion_ap = _float_tag(champion, "student_ap")
    if (champion.tags or {}).get("val_set") != val_set:
        if champion_score is None or champion_score.version != int(champion.version):
            return False, f"champion v{champion.version} was measured on another val set", None
        champion_ap = champion_score.ap
    if champion_ap is None or student_ap > champion_ap:
        return True, f"student AP {student_ap:.4f} beats champion's {champion_ap}", champion_ap
    return (
        False,
        f"student AP {student_ap:.4f} does not beat champion v{champion.version} "
        f"({champion_ap:.4f}); the champion stays",
        champion_ap,
    )


def champion_to_rescore(
    params: Params, workdir: Path, student_ap: float, val_set: str
) -> tuple[int, Path] | None:
    """(version, ONNX file) of the champion when a version of `student_ap`, measured on
    `val_set`, could take its slot but the champion was measured on other data: the export
    scores that file on its val set and passes the `ChampionScore` to `register_student`.
    None when there is nothing to re-measure: no champion, the same val set, or a student
    below `registry.min_ap`, which cannot win (checked first, without opening the store)."""
    if _below_min_ap(params, student_ap) is not None:
        return None
    champion = current_champion(params, workdir)
    if champion is None or (champion.tags or {}).get("val_set") == val_set:
        return None
    return int(champion.version), load_onnx(params, workdir, champion.version)


def _below_min_ap(params: Params, student_ap: float) -> str | None:
    """Why `student_ap` may not be champion ("below registry.min_ap 0.05"), None if it may.

    Strictly below: a student exactly at the threshold passes.
    """
    min_ap = params.registry.min_ap
    return f"below registry.min_ap {min_ap:g}" if student_ap < min_ap else None


def _log_run(client, params, workdir, files, card, metrics, val_set) -> str:
    run = client.create_run(
        _experiment_id(client, params, workdir),
        run_name=f"export-{card.get('preset', 'student')}",
        tags={"sdpose.stage": "export", "sdpose.val_set": val_set},
    )
    run_id = run.info.run_id
    for key, value in metrics.items():
        if isinstance(value, int | float) and math.isfinite(value):
            client.log_metric(run_id, key, float(value))
    for key, value in (card.get("training_params") or {}).items():
        client.log_param(run_id, key, json.dumps(value) if isinstance(value, dict) else value)
    with tempfile.TemporaryDirectory() as folder:  # each file under its registry name
        for name, path in files.items():
            target = Path(folder) / name
            if Path(path).name == name:
                client.log_artifact(run_id, str(path), ARTIFACT_DIR)
                continue
            shutil.copyfile(path, target)
            client.log_artifact(run_id, str(target), ARTIFACT_DIR)
    client.log_dict(run_id, card, f"{ARTIFACT_DIR}/{CARD_NAME}")
    client.set_terminated(run_id)
    return run_id


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException  # lazy: see the note on mlflow

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description="SDPose one-cycle student (ONNX file, model card, PyTorch weights)"
        )


def list_versions(params: Params, workdir: Path) -> list[dict[str, Any]]:
    """Every registered version, newest first: version, student AP, champion flag, ...

    `not_champion` is the min_ap gate's reason for a version it refused, else None.
    """
    client = _client(params, workdir)
    name = params.registry.model_name
    champion = current_champion(params, workdir, client)
    champion_version = champion.version if champion else None
    versions = client.search_model_versions(f"name = '{name}'")
    rows = [
        {
            "version": int(version.version),
            "student_ap": _float_tag(version, "student_ap"),
            "champion": version.version == champion_version,
            "preset": (version.tags or {}).get("preset"),
            "gflops": _float_tag(version, "gflops"),
            "val_set": (version.tags or {}).get("val_set"),
            "not_champion": (version.tags or {}).get(NOT_CHAMPION_TAG),
            "int8": (version.tags or {}).get(INT8_TAG),
            "int8_ap": _float_tag(version, "int8_ap"),
            "run_id": version.run_id,
            "created": version.creation_timestamp,
            "source": version.source,
        }
        for version in versions
    ]
    return sorted(rows, key=lambda row: -row["version"])


def load_onnx(params: Params, workdir: Path, version_or_uri: str | int, form: str = "fp32") -> Path:
    """The local ONNX file of a version: `models:/NAME@ALIAS`, `models:/NAME/3` or `3`;
    `form` "int8": its int8 file (a RegistryError saying why when it has none).

    A local (file:) artifact store is read in place; a remote one is downloaded next to the
    tracking store.
    """
    if form not in ("fp32", "int8"):
        raise ValueError(f"form {form!r}: expected fp32 or int8")
    return _version_file(
        params, workdir, version_or_uri, INT8_NAME if form == "int8" else ONNX_NAME
    )


def download_weights(params: Params, workdir: Path, version_or_uri: str | int) -> Path:
    """The PyTorch checkpoint a registered version was exported from (`train.init` from a
    registry URI); a RegistryError for a version registered before weights were logged."""
    return _version_file(params, workdir, version_or_uri, WEIGHTS_NAME)


def _version_file(params: Params, workdir: Path, version_or_uri: str | int, file_name: str) -> Path:
    """One artifact file of a version, read in place or downloaded."""
    client = _client(params, workdir)
    version = _resolve_version(client, params.registry.model_name, version_or_uri)
    source = client.get_model_version_download_uri(version.name, version.version)
    if source.startswith("file://"):
        folder = Path(unquote(urlparse(source).path))
    else:
        import mlflow.artifacts  # lazy: see the note on mlflow

        destination = Path(workdir) / REGISTRY_DOWNLOADS / f"{version.name}-v{version.version}"
        destination.mkdir(parents=True, exist_ok=True)
        folder = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=source,
                dst_path=str(destination),
                tracking_uri=tracking_uri(params, workdir),
            )
        )
    path = folder / file_name
    if not path.is_file():
        why = (version.tags or {}).get(INT8_TAG) if file_name == INT8_NAME else None
        because = f" (int8: {why})" if why else ""
        raise RegistryError(
            f"{version.name} v{version.version}: no {file_name} in {folder}{because}"
        )
    return path


def _resolve_version(client, default_name: str, version_or_uri: str | int):
    from mlflow.exceptions import MlflowException  # lazy: see the note on mlflow

    text = str(version_or_uri)
    name, reference = default_name, text
    if text.startswith("models:/"):
        body = text[len("models:/") :]
        name, sep, reference = body.partition("@") if "@" in body else body.partition("/")
        if not sep or not reference:
            raise RegistryError(f"{text}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
        reference = "@" + reference if sep == "@" else reference
    try:
        if reference.startswith("@"):
            return client.get_model_version_by_alias(name, reference[1:])
        return client.get_model_version(name, reference)
    except MlflowException as error:
        raise RegistryError(f"{text}: no such registered model version ({error})") from None


def registered_line(params: Params, workdir: Path, exported: bool = False) -> str | None:
    """The newest registered student; the model card cannot say, it is written before the
    export stage registers it. `exported`: the export ran elsewhere (an experiment)."""
    card = Path(workdir) / EXPORT_DIR / CARD_NAME
    if not exported and not card.exists():  # export has not run
        return None
    versions = list_versions(params, workdir)
    if not versions:
        return None
    newest = versions[0]
    champion = " (champion)" if newest["champion"] else ""
    if newest.get("not_champion"):
        champion = f" (not champion: {newest['not_champion']})"
    name = params.registry.model_name
    return f"- registered model: `{name}` version {newest['version']}{champion}"
