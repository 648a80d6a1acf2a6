"""A flow run with overrides as a DVC experiment (`dvc exp run --temp -S ...`).

Why an experiment and not an edit of params.yaml: the user's params.yaml must stay
byte-identical (comments and nulls included), two runs started together must not race on
one file and one set of output folders, and a run's parameters and outputs must be findable
afterwards. DVC's temporary-workspace executor gives all three: each run works in its own
copy under .dvc/tmp/exps, shares the project's cache (and so its run-cache), and is saved as
a named experiment that `dvc exp show` lists and `dvc exp apply NAME` brings into the
workspace. See docs/experiments.md.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sdpose.config import ConfigError
from sdpose.mlflow_store import REGISTRY_ROOT_ENV

EXPERIMENT_PREFIX = "prefect-"
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


def experiment_name(flow_run_name: str) -> str:
    """`prefect-<flow run name>`, reduced to what a git ref and `dvc exp` accept."""
    slug = re.sub(r"[^a-z0-9]+", "-", flow_run_name.lower()).strip("-")
    return EXPERIMENT_PREFIX + (slug or "run")


def override_value(value: Any) -> str:
    """A params value in the override grammar of `dvc exp run -S` (Hydra's).

    JSON's quoting is not that grammar: strings are single-quoted, dict keys bare.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{value!r}: not a finite number")
        return repr(value)
    if isinstance(value, str):
        # Hydra reads a backslash literally except in a run before a quote or the end.
        escaped = re.sub(r"(\\*)'", lambda found: found.group(1) * 2 + "\\'", value)
        escaped = re.sub(r"(\\+)$", lambda found: found.group(1) * 2, escaped)
        return f"'{escaped}'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(override_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            if not isinstance(key, str) or not _KEY.match(key):
                raise ConfigError(f"{key!r}: a params key must be a name (letters, digits, _.-)")
            items.append(f"{key}: {override_value(item)}")
        return "{" + ", ".join(items) + "}"
    raise ConfigError(f"{value!r}: a params value must be YAML data, not {type(value).__name__}")


def set_param_args(overrides: dict[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`-S ++key=value` per override (`++`: set the key whether or not params.yaml has it).

    Hydra merges a mapping into the mapping already there, while an override replaces it
    (`sdpose.config.apply_overrides`: a `tune.space` override is the whole search space),
    so a mapping that exists in `current` (params.yaml as loaded) is deleted first (`~key`).
    """
    args = []
    for key, value in overrides.items():
        if not _KEY.match(key):
            raise ConfigError(f"{key!r}: an override key must be dotted names, e.g. train.lr")
        try:
            encoded = override_value(value)
        except ConfigError as error:
            raise ConfigError(f"{key}: {error}") from None
        if isinstance(value, dict) and isinstance(_lookup(current, key), Mapping):
            args += ["-S", f"~{key}"]
        args += ["-S", f"++{key}={encoded}"]
    return args


def _lookup(document: Mapping[str, Any], dotted: str) -> Any:
    node: Any = document
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def run_experiment(
    workdir: Path, name: str, set_args: list[str], log: Callable[[str], None]
) -> str:
    """Run the whole pipeline as experiment `name` with `set_args` (`set_param_args`);
    every output line goes to `log`.

    The registry resolves against `workdir` (REGISTRY_ROOT_ENV), not the temporary copy,
    so the student is registered in the project's registry. Returns the experiment's
    commit. Raises RuntimeError with the end of DVC's output when the run fails.
    """
    dvc = str(Path(sys.executable).parent / "dvc")
    args = [dvc, "exp", "run", "--temp", "--name", name, *set_args]
    env = {**os.environ, REGISTRY_ROOT_ENV: str(workdir), "DVC_NO_ANALYTICS": "1"}
    lines: list[str] = []
    with subprocess.Popen(
        args, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip())
            log(line.rstrip())
    if process.returncode:
        tail = "\n".join(lines[-40:])
        code = process.returncode
        raise RuntimeError(f"dvc exp run (experiment {name}) failed ({code}):\n{tail}")
    return experiment_commit(workdir, name)


def experiment_commit(workdir: Path, name: str) -> str:
    """The commit DVC saved experiment `name` as (refs/exps/.../name)."""
    refs = _git(workdir, "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps")
    found = [line.split()[0] for line in refs.splitlines() if line.endswith(f"/{name}")]
    if not found:
        raise RuntimeError(f"experiment {name}: no refs/exps entry after the run")
    return found[-1]


def experiment_json(workdir: Path, commit: str, path: str) -> dict[str, Any] | None:
    """A JSON file (metrics/eval.json, ...) as the experiment saved it; None if absent."""
    done = subprocess.run(
        ["git", "show", f"{commit}:{path}"], cwd=workdir, capture_output=True, text=True
    )
    return json.loads(done.stdout) if done.returncode == 0 else None


def _git(workdir: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=workdir, capture_output=True, text=True, check=True
    ).stdout
