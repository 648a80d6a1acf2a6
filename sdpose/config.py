"""Typed parameters: params.yaml -> validated pydantic models, with `a.b=c` overrides.

Every entry point (CLI, Prefect flow, DVC stage) loads parameters through `load_params`,
so a bad value fails the same way everywhere: before any work starts, with the key named.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    model_validator,
)

from sdpose.core.errors import InputError
from sdpose.core.presets import OVERRIDABLE, ModelConfig, resolve_model_config

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(InputError):
    """Parameters that cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SynthParams(_Section):
    seed: StrictInt = 0
    train_images: StrictInt = Field(300, ge=1)
    val_images: StrictInt = Field(60, ge=1)
    image_size: tuple[int, int] = (320, 256)  # width, height
    max_people: StrictInt = Field(4, ge=1, le=8)
    occluders: StrictBool = True  # posts, counters, bags and sticks in front of people
    clutter: StrictBool = True  # furniture, lines and limb-like sticks in the background
    workers: StrictInt = Field(0, ge=0)  # 0 = one process per core

    @model_validator(mode="after")
    def _image_big_enough(self) -> SynthParams:
        if min(self.image_size) < 64:
            raise ValueError(
                f"image_size {list(self.image_size)} must be at least 64 pixels a side"
            )
        return self


class DataParams(_Section):
    source: Literal["synth", "coco"] = "synth"
    root: Path = Path("data/raw/synth")
    strict: StrictBool = False


class CropsParams(_Section):
    encoding: Literal["jpeg", "raw"] = "jpeg"
    jpeg_quality: StrictInt = Field(95, ge=1, le=100)
    rows_per_shard: StrictInt = Field(512, ge=1)
    context: float = Field(1.5, ge=1.0, le=3.0)


class ModelParams(_Section):
    preset: str = "sdpose-nano"
    cycles: StrictInt | None = Field(None, ge=1, le=8)
    dim: StrictInt | None = Field(None, ge=8)
    depth: StrictInt | None = Field(None, ge=1)
    heads: StrictInt | None = Field(None, ge=1)
    # [height, width] of the network input and of its heatmaps; null keeps the preset's.
    # A new input_size alone keeps the preset's stride (the heatmap follows).
    input_size: tuple[int, int] | None = None
    heatmap_size: tuple[int, int] | None = None
    # 'heatmap' (TokenPose's, the paper's) or 'simcc' (x and y bins); null keeps the preset's
    head: Literal["heatmap", "simcc"] | None = None
    simcc_split: StrictInt | None = Field(None, ge=1, le=8)  # SimCC bins per input pixel

    def overrides(self) -> dict[str, Any]:
        """The architecture fields that differ from the preset."""
        return {
            name: getattr(self, name) for name in OVERRIDABLE if getattr(self, name) is not None
        }

    @model_validator(mode="after")
    def _resolves(self) -> ModelParams:
        self.resolve()
        return self

    def resolve(self) -> ModelConfig:
        """The full architecture: the preset with the overrides applied and checked."""
        return resolve_model_config(self.preset, **self.overrides())


class AugmentParams(_Section):
    flip_prob: float = Field(0.5, ge=0, le=1)
    half_body_prob: float = Field(0.3, ge=0, le=1)
    half_body_min_joints: StrictInt = Field(8, ge=0, le=17)
    scale_factor: float = Field(0.35, ge=0, lt=1)
    rotation_factor: float = Field(45.0, ge=0, le=180)
    rotation_prob: float = Field(0.6, ge=0, le=1)
    shift_factor: float = Field(0.16, ge=0, lt=1)
    shift_prob: float = Field(0.3, ge=0, le=1)


class TrainParams(_Section):
    # where the weights start: scratch | a shipped name (sdpose/models/weights/index.json) |
    # a checkpoint path | a registry URI (models:/NAME/VERSION or models:/NAME@ALIAS)
    init: str = Field("scratch", min_length=1)
    seed: StrictInt = 0
    epochs: StrictInt = Field(6, ge=1)
    batch_size: StrictInt = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_iters: StrictInt = Field(40, ge=0)
    warmup_ratio: float = Field(0.001, gt=0, le=1)
    lr_schedule: Literal["step", "cosine"] = "step"
    lr_steps: list[StrictInt] = [4, 5]  # step: epochs at which lr is multiplied by lr_factor
    lr_factor: float = Field(0.1, gt=0, le=1)
    sigma: float = Field(2.0, gt=0)  # heatmap head: target sigma in heatmap pixels
    # heatmap head: squared errors under each target's Gaussian count this many times
    heatmap_foreground_weight: float = Field(1.0, ge=1)
    # SimCC head: label sigmas (x, y) in bins (null: RTMPose's, scaled to the input and
    # split), the logits' softmax temperature, and the labels' (null: no label softmax)
    simcc_sigma: tuple[float, float] | None = None
    simcc_beta: float = Field(10.0, gt=0)
    simcc_label_beta: float | None = Field(10.0, gt=0)
    token_distill_weight: float = Field(5e-6, ge=0)
    heatmap_distill_weight: float = Field(0.0, ge=0)
    detach_teacher: StrictBool = False
    use_joint_weights: StrictBool = False  # MMPose's COCO joint weights in the heatmap loss
    amp: StrictBool = True
    max_failures: StrictInt = Field(2, ge=-1)
    augment: AugmentParams = Field(default_factory=AugmentParams)

    @model_validator(mode="after")
    def _steps_increase(self) -> TrainParams:
        if self.lr_steps != sorted(self.lr_steps):
            raise ValueError(f"lr_steps: {self.lr_steps} must be in increasing order")
        if self.simcc_sigma is not None and min(self.simcc_sigma) <= 0:
            raise ValueError(f"simcc_sigma: {list(self.simcc_sigma)} must be two positive numbers")
        return self


class TuneParams(_Section):
    num_samples: StrictInt = Field(4, ge=1)
    max_epochs: StrictInt = Field(2, ge=1)
    grace_period: StrictInt = Field(1, ge=1)
    reduction_factor: StrictInt = Field(2, ge=2)
    scheduler: Literal["asha", "fifo"] = "asha"
    time_budget_s: float = Field(3600, gt=0)
    max_concurrent: StrictInt = Field(0, ge=0)
    space: dict[str, dict[str, Any]] = {}

    @model_validator(mode="after")
    def _space_is_well_formed(self) -> TuneParams:
        kinds = {"choice", "uniform", "loguniform", "randint"}
        for key, spec in self.space.items():
            if key.split(".")[0] not in ("model", "train"):
                raise ValueError(f"space: key {key!r} must be a model.* or train.* parameter")
            if len(spec) != 1 or next(iter(spec)) not in kinds:
                raise ValueError(f"space: {key} must be one of {sorted(kinds)}, got {spec}")
        return self


class EvaluateParams(_Section):
    boxes: Path | None = None
    det_score_thr: float = Field(0.0, ge=0, le=1)
    vis_thr: float = Field(0.2, ge=0, le=1)
    oks_thr: float = Field(0.9, ge=0, le=1)
    flip_test: StrictBool = True
    decode: Literal["dark", "argmax"] = "dark"


class ExportParams(_Section):
    opset: StrictInt = Field(23, ge=17)
    atol: float = Field(1e-4, gt=0)
    # Where the exported files run (predict, ONNX scoring): auto = the faster one measured
    # at export, per file, recorded in the model card.
    runtime: Literal["auto", "onnxruntime", "openvino"] = "auto"
    # The int8 file is registered only if its ONNX AP (0-1 scale) is at most this much
    # below the fp32 file's, and its heatmaps within int8_rtol of PyTorch's peak.
    int8_max_ap_drop: float = Field(0.005, ge=0, le=1)
    int8_rtol: float = Field(0.1, gt=0, le=1)
    calibration_samples: StrictInt = Field(256, ge=1, le=4096)  # training crops, int8 ranges


class PipelineParams(_Section):
    """How the Prefect flow runs the stages; no stage reads these, so DVC tracks none."""

    retries: StrictInt = Field(1, ge=0)  # task retries of train and tune (transient failures)


class RayParams(_Section):
    address: str = ""
    num_workers: StrictInt = Field(2, ge=1)
    use_gpu: StrictBool = False
    cpus_per_worker: float = Field(0.5, gt=0)
    storage_path: Path = Path("models/ray")
    dashboard_host: str = "127.0.0.1"
    # the address a Ray that a run starts itself (address "") binds every listener to:
    # loopback, so nothing is reachable from the network; a head other machines should
    # join is `ray start --head` (or this set to the machine's address), joined with "auto"
    node_ip: str = Field("127.0.0.1", min_length=1)
    # the train feed's read-ahead: object store memory its Ray Data pipeline may fill ahead
    # of the trainers (augmented samples are ~0.36 MB each at 256x192); Ray's own default is
    # half the node's object store, several GB that a fast feed fills whatever the step's pace
    feed_memory_mb: StrictInt = Field(512, ge=64)


class RegistryParams(_Section):
    tracking_uri: str = "sqlite:///mlruns.db"
    experiment: str = "sdpose"
    model_name: str = "sdpose-student"
    # A student below this AP (0-1 scale) is registered but never becomes the champion:
    # with no champion yet, a near-zero model would otherwise take the slot by default.
    min_ap: float = Field(0.05, ge=0, le=1)


class Params(_Section):
    """All of params.yaml."""

    synth: SynthParams = Field(default_factory=SynthParams)
    data: DataParams = Field(default_factory=DataParams)
    crops: CropsParams = Field(default_factory=CropsParams)
    model: ModelParams = Field(default_factory=ModelParams)
    train: TrainParams = Field(default_factory=TrainParams)
    tune: TuneParams = Field(default_factory=TuneParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    export: ExportParams = Field(default_factory=ExportParams)
    ray: RayParams = Field(default_factory=RayParams)
    registry: RegistryParams = Field(default_factory=RegistryParams)
    pipeline: PipelineParams = Field(default_factory=PipelineParams)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML- and JSON-safe values (paths as strings, tuples as lists)."""
        return self.model_dump(mode="json")


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=c` -> ("a.b", YAML value of c)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key=value (for example model.dim=64)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({error})") from error
    return key.strip(), value


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a nested dict; a key that passes through a non-mapping is an error."""
    merged = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        node = merged
        *parents, leaf = dotted.split(".")
        for depth, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                prefix = ".".join(parents[: depth + 1])
                raise ConfigError(f"override {dotted}: {prefix} is a value, not a section")
            node = child
        # tune.space keys contain dots themselves: `tune.space.model.dim=...` is not supported,
        # edit params.yaml for the search space.
        node[leaf] = value
    return merged


def validate_params(raw: dict[str, Any], source: str = "params") -> Params:
    """Validate a params mapping; errors name the source and every failing key."""
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


# Keys that earlier versions of params.yaml had elsewhere: their error says where they went.
MOVED_KEYS = {"train.retries": "pipeline.retries"}


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        field = re.match(r"^(\w+): (.*)$", message, re.S)
        if field and item["type"] == "value_error":  # "dim: must be ..." -> model.dim
            key, message = f"{key}.{field.group(1)}", field.group(2)
        if item["type"] == "extra_forbidden":
            message = "unknown parameter (check the spelling against params.yaml)"
            if key in MOVED_KEYS:
                message = f"moved to {MOVED_KEYS[key]}"
        if item["type"] in ("int_type", "bool_type"):  # strict: true is not 1, 1 not true
            message += f", got {item['input']!r}"
        lines.append(f"{key}: {message}")
    return f"{source}: invalid parameters\n  " + "\n  ".join(lines)


def load_params(
    path: Path | str = DEFAULT_PARAMS,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    missing_ok: bool = True,
) -> Params:
    """Read params.yaml, apply overrides, validate.

    A missing file gives all defaults only with `missing_ok`: the CLI passes False for a
    `--params` the user typed, so a typo is an error rather than a run on the defaults.
    """
    path = Path(path)
    raw: dict[str, Any] = {}
    if path.exists() or not missing_ok:
        raw = read_params_file(path)
    if isinstance(overrides, list):
        overrides = dict(parse_override(text) for text in overrides)
    source = str(path) + (" with overrides" if overrides else "")
    return validate_params(apply_overrides(raw, overrides or {}), source)


def read_params_file(path: Path) -> dict[str, Any]:
    """The mapping in a parameter file; every way it can be unusable names the file."""
    if not path.exists():
        raise ConfigError(f"{path}: parameter file not found")
    if not path.is_file():
        raise ConfigError(f"{path}: is a directory, not a parameter file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte {error.start}); save it as UTF-8 YAML"
        ) from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the parameter file ({error.strerror})") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw


def dump_params(params: Params) -> str:
    """The resolved parameters as YAML, for `sdpose config show` and run records."""
    return yaml.safe_dump(params.to_dict(), sort_keys=False)
