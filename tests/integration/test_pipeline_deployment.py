"""The deployment `sdpose/full-pipeline` on a real Prefect server, run from the Prefect CLI.

A `prefect server start` (SQLite under a temporary PREFECT_HOME) and `sdpose serve` in a
copy of the project (project_copy.py) are started once for the module. A run with an
invalid override must fail before any stage starts; a run whose overrides make every stage
tiny must run as DVC experiments: two started together both complete, each with its own
params and metrics in `dvc exp show`, each student registered, the two artifacts on each
flow run, and the project's params.yaml byte-identical. The tests run in file order: the
first needs a copy no stage has touched. Every process the module started is stopped, and
checked gone, at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from project_copy import VENV_BIN, copy_project, tool_env
from shared import TINY_PIPELINE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

DEPLOYMENT = "sdpose/full-pipeline"
STAGES = ["synth", "prepare", "crops", "train", "tune", "evaluate", "export"]
# sdpose-nano has 4 heads: an embedding size of 102 cannot be split between them.
BAD_OVERRIDES = {"model.dim": 102}
RAY_PROCESS_MARKS = ("raylet", "gcs_server", "ray::", "ray/_private", "ray/dashboard")
STARTUP_S = 180  # two busy cores: Prefect's server and runner take tens of seconds


# ------------------------------------------------------------------ processes
@dataclass
class ProcessTracker:
    """Every process under the started ones, sampled until stopped: a stage's Ray processes
    may outlive their parent and leave the tree, and must be stopped all the same."""

    leaders: list[subprocess.Popen] = field(default_factory=list)
    seen: dict[tuple[int, float], psutil.Process] = field(default_factory=dict)
    _done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        threading.Thread(target=self._sample_forever, daemon=True).start()

    def start(self, args: list[str], cwd: Path, env: dict[str, str], log: Path):
        """A process in its own session (one group to signal), output to `log`."""
        with log.open("w") as stream:
            process = subprocess.Popen(
                args, cwd=cwd, env=env, stdout=stream, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.leaders.append(process)
        self.sample()
        return process

    def sample(self) -> None:
        for leader in self.leaders:
            try:
                root = psutil.Process(leader.pid)
                family = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for process in family:
                with contextlib.suppress(psutil.NoSuchProcess):
                    self.seen.setdefault((process.pid, process.create_time()), process)

    def _sample_forever(self) -> None:
        while not self._done.wait(1.0):
            self.sample()

    def alive(self) -> list[psutil.Process]:
        return [process for process in self.seen.values() if _running(process)]

    def stop(self) -> list[psutil.Process]:
        """Newest leader first (the runner needs the server to shut down cleanly): SIGINT,
        then SIGTERM, then SIGKILL to each group; then every process ever seen. Returns
        the processes still alive."""
        self.sample()
        self._done.set()
        for leader in reversed(self.leaders):
            for signum, grace in ((signal.SIGINT, 15), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                if leader.poll() is not None:
                    break
                _signal_group(leader.pid, signum)
                try:
                    leader.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    continue
            _signal_group(leader.pid, signal.SIGKILL)  # whatever is left in its group
            leader.wait(timeout=10)
        for process in self.alive():
            process.kill()
        _, alive = psutil.wait_procs(self.alive(), timeout=10)
        return alive


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


# ------------------------------------------------------------------ Prefect API
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def api(url: str, body: dict[str, Any] | None = None) -> Any:
    """GET (or POST `body`) a Prefect REST endpoint; the decoded JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_until(ready: Callable[[], bool], timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise TimeoutError(f"{what} not ready after {timeout} s\n" + "\n".join(map(tail, logs)))


def tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return f"--- {path.name}:\n" + "\n".join(text.splitlines()[-lines:])


@dataclass
class Served:
    """The server's API URL, the served project copy and the environment to reach them."""

    api_url: str
    workdir: Path
    env: dict[str, str]
    logs: list[Path]
    tracker: ProcessTracker

    def run_deployment(self, overrides: dict[str, Any], timeout: int) -> tuple[dict, str]:
        """`prefect deployment run ... --watch`; the flow run (from the API) and CLI output."""
        args = [
            str(VENV_BIN / "prefect"), "deployment", "run", DEPLOYMENT,
            "--param", f"overrides={json.dumps(overrides)}",
            "--watch", "--watch-interval", "3", "--watch-timeout", str(timeout),
        ]  # fmt: skip
        done = subprocess.run(
            args, env=self.env, capture_output=True, text=True, timeout=timeout + 120
        )
        output = done.stdout + done.stderr
        found = re.search(r"UUID: ([0-9a-f-]{36})", output)
        assert found, f"no flow run created:\n{output}"
        return api(f"{self.api_url}/flow_runs/{found.group(1)}"), output

    def artifacts(self, flow_run_id: str) -> dict[str, dict]:
        body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
        return {item["key"]: item for item in api(f"{self.api_url}/artifacts/filter", body)}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A Prefect server and `sdpose serve` in an untouched project copy (default params)."""
    root = tmp_path_factory.mktemp("deployment")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    settings = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "INFO"}
    server_home, client_home = root / "server-home", root / "client-home"
    server_env = tool_env(
        **settings,
        PREFECT_HOME=str(server_home),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{server_home / 'prefect.db'}",
    )
    server_env.pop("PREFECT_API_URL", None)
    client_env = tool_env(
        **settings,
        PREFECT_HOME=str(client_home),
        PREFECT_API_URL=api_url,
        PREFECT_RUNNER_POLL_FREQUENCY="2",  # pick a new run up within seconds, not 10
    )
    logs = [root / "server.log", root / "serve.log"]
    tracker = ProcessTracker()
    try:
        tracker.start(
            [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
             "--port", str(port), "--no-ui"],
            cwd=root, env=server_env, log=logs[0],
        )  # fmt: skip
        wait_until(lambda: api(f"{api_url}/health") is True, STARTUP_S, "Prefect server", logs)
        workdir = copy_project(root / "project", overrides={})  # the project's own params
        tracker.start([str(VENV_BIN / "sdpose"), "serve"], cwd=workdir, env=client_env,
                      log=logs[1])  # fmt: skip
        wait_until(
            lambda: bool(api(f"{api_url}/deployments/name/{DEPLOYMENT}").get("id")),
            STARTUP_S,
            f"deployment {DEPLOYMENT}",
            logs,
        )
        yield Served(api_url, workdir, client_env, logs, tracker)
    finally:
        left = tracker.stop()
        assert not left, f"processes left running: {[p.pid for p in left]}"
        assert all(leader.poll() is not None for leader in tracker.leaders)


# ------------------------------------------------------------------ tests
def test_invalid_override_fails_the_run_before_any_stage(served: Served) -> None:
    params_before = (served.workdir / "params.yaml").read_text()

    flow_run, output = served.run_deployment(BAD_OVERRIDES, timeout=300)

    state = flow_run["state"]
    assert state["type"] == "FAILED", f"{state}\n{output}\n{tail(served.logs[1])}"
    assert "model.dim" in state["message"] and "102" in state["message"], state["message"]
    assert flow_run["parameters"]["overrides"] == BAD_OVERRIDES
    # validated before anything was written or run
    assert (served.workdir / "params.yaml").read_text() == params_before
    assert not (served.workdir / "data" / "raw").exists()
    assert not (served.workdir / "dvc.lock").exists()


def test_runs_with_overrides_are_side_by_side_dvc_experiments(served: Served) -> None:
    """Two runs started together, each a DVC experiment of its own params; the user's
    params.yaml byte-identical; each student registered with its run's params."""
    workdir = served.workdir
    params_before = (workdir / "params.yaml").read_bytes()
    runs = {seed: {**TINY_PIPELINE, "train.seed": seed} for seed in (0, 1)}
    with ThreadPoolExecutor(len(runs)) as pool:
        started = {seed: pool.submit(served.run_deployment, o, 1000) for seed, o in runs.items()}
        done = {seed: future.result() for seed, future in started.items()}

    for flow_run, output in done.values():
        state = flow_run["state"]
        assert state["type"] == "COMPLETED", f"{state}\n{output}\n{tail(served.logs[1], 80)}"
    assert (workdir / "params.yaml").read_bytes() == params_before
    assert not (workdir / "dvc.lock").exists() and not (workdir / "models").exists()

    experiments = _experiments(workdir)
    addresses = set()
    versions = _registered_versions(workdir)
    assert len(versions) == len(runs), versions
    registered_seeds = sorted(
        json.loads(_run_params(workdir, version.run_id)["train"])["seed"] for version in versions
    )
    assert registered_seeds == sorted(runs)
    for seed, (flow_run, _) in done.items():
        name = f"prefect-{flow_run['name']}"
        assert name in experiments, sorted(experiments)
        params, metrics = experiments[name]
        assert params["train"]["seed"] == seed
        assert params["synth"]["train_images"] == TINY_PIPELINE["synth.train_images"]
        assert params["tune"]["space"] == TINY_PIPELINE["tune.space"]
        evaluation = metrics["metrics/eval.json"]["data"]
        assert 0.0 <= evaluation["student_ap"] <= 1.0
        assert set(evaluation["models"]) == {"train", "tune"}

        artifacts = served.artifacts(flow_run["id"])
        assert {"sdpose-eval", "sdpose-summary"} <= set(artifacts), sorted(artifacts)
        table = artifacts["sdpose-eval"]["data"]
        rows = json.loads(table) if isinstance(table, str) else table
        best = next(row for row in rows if row["model"] == f"{evaluation['best']} (best)")
        assert best["student AP"] == evaluation["student_ap"]
        summary = artifacts["sdpose-summary"]["data"]
        assert f"DVC experiment: `{name}`" in summary and f"dvc exp apply {name}" in summary
        addresses.add(_assert_one_ray_for_the_run(workdir / "logs" / name, metrics))
    assert len(addresses) == len(runs)  # each run had its own Ray
    _assert_ray_stopped(served.tracker)
    _assert_readable_output(served.logs[1].read_text(), len(runs))


def _assert_one_ray_for_the_run(logs: Path, metrics: dict[str, Any]) -> str:
    """Every Ray stage of the run ran on the Ray the flow started, now stopped; its address."""
    record = json.loads((logs / "ray.json").read_text())
    address = record["address"]
    assert address and record["pids"], record
    assert metrics["metrics/train.json"]["data"]["ray_address"] == address
    assert metrics["metrics/tune.json"]["data"]["ray_address"] == address
    # stages DVC restored from its run-cache (the other run's synth, prepare, crops) ran
    # nothing and logged nothing; train and tune differ by seed, so they ran in each run
    crops_log = logs / "crops.log"
    assert not crops_log.exists() or f"on Ray {address}" in crops_log.read_text()
    deadline = time.monotonic() + 60
    while (alive := [pid for pid in record["pids"] if psutil.pid_exists(pid)]) and (
        time.monotonic() < deadline
    ):
        time.sleep(1)
    assert not alive, f"the run's Ray processes {alive} outlived it"
    for stage in ("train", "tune", "evaluate", "export"):
        assert "done in" in (logs / f"{stage}.log").read_text(), stage  # its result line
    return address


def _assert_readable_output(output: str, runs: int) -> None:
    """What the runs printed (not a terminal): stage, epoch and trial lines; no Ray report
    dicts, DVC hints or warnings repeated stage after stage (they stay in logs/)."""
    assert "TrainingReport(" not in output and "dvc config core.autostage" not in output
    assert "Progress bars disabled" not in output
    assert len(re.findall(r"train: done in", output)) == runs
    assert len(re.findall(r"epoch 1/1 +loss", output)) == runs  # rank 0 only, once
    assert len(re.findall(r"trial \d/2 ", output)) == 2 * runs
    warnings = [re.sub(r"^.*?(WARNING)", r"\1", line) for line in output.splitlines()
                if "WARNING" in line]  # fmt: skip
    repeated = {line for line in warnings if warnings.count(line) > runs}
    assert not repeated, repeated


def _experiments(workdir: Path) -> dict[str, tuple[dict, dict]]:
    """`dvc exp show --json`: experiment name -> (its params.yaml, its metrics)."""
    done = subprocess.run(
        [str(VENV_BIN / "dvc"), "exp", "show", "--json"], cwd=workdir, env=tool_env(),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = {}
    for baseline in json.loads(done.stdout):
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                data = rev["data"]
                found[rev["name"]] = (data["params"]["params.yaml"]["data"], data["metrics"])
    return found


def _run_params(workdir: Path, run_id: str) -> dict[str, str]:
    from mlflow import MlflowClient

    uri = f"sqlite:///{workdir / 'mlruns.db'}"
    return MlflowClient(tracking_uri=uri).get_run(run_id).data.params


def _registered_versions(workdir: Path) -> list:
    from mlflow import MlflowClient

    uri = f"sqlite:///{workdir / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return client.search_model_versions("name = 'sdpose-student'")


def _assert_ray_stopped(tracker: ProcessTracker) -> None:
    """Each stage shut its Ray down: no Ray process of the run outlives it for long."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ray = [p for p in tracker.alive() if _is_ray(p)]
        if not ray:
            return
        time.sleep(2)
    raise AssertionError(f"Ray processes left after the run: {[p.pid for p in ray]}")


def _is_ray(process: psutil.Process) -> bool:
    try:
        text = " ".join(process.cmdline())
    except psutil.Error:
        return False
    return any(name in text for name in RAY_PROCESS_MARKS)
