"""One way for every stage to get a Ray: local, `auto` or `ray://`, quiet unless a person watches.

Stages call `ray_session(params.ray)` and never `ray.init` themselves, so the address rules,
the dashboard binding and the logging policy are the same for crops, train and tune, and a
Ray started by a caller (a test, a notebook, the Prefect flow) is reused instead of replaced.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray._private import ray_constants
from ray.data import DataContext

from sdpose.config import RayParams
from sdpose.console import interactive

# Ray's own loggers that narrate every execution at INFO; warnings and errors still show.
RUN_RAY_ENV = "SDPOSE_RAY_ADDRESS"  # the Ray of the whole pipeline run (`run_ray`)
_NOISY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "filelock")


def quiet_ray_logs() -> None:
    """Configure Ray Data's driver-side output: bars only at a terminal, no banners.

    Inside a stage command (`sdpose.console`) stderr is the stage's log, so no bars.
    """

    bars = interactive(sys.stderr)
    context = DataContext.get_current()
    context.enable_progress_bars = bars
    context.enable_operator_progress_bars = bars
    context.print_on_execution_start = bars
    context.verbose_stats_logs = False
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def init_ray(ray_params: RayParams, log_to_driver: bool = True) -> dict[str, Any]:
    """Connect to (or start) the Ray of `ray_params.address`; idempotent.

    "" joins the pipeline run's Ray (`run_ray`, $SDPOSE_RAY_ADDRESS) or else starts a new
    local Ray with its dashboard on `dashboard_host`; "auto" joins the cluster of this
    machine; "ray://host:port" goes through Ray Client. A Ray already
    initialised in this process is reused whatever the address says. Returns what a log
    line or a run record needs: address, dashboard URL, CPUs and GPUs, and `started`
    (whether this call started it, so that only the starter shuts it down).
    """

    started = False
    address = ray_params.address or os.environ.get(RUN_RAY_ENV, "")
    if not ray.is_initialized():
        options: dict[str, Any] = {
            "logging_level": logging.WARNING,
            "log_to_driver": log_to_driver,
            "ignore_reinit_error": True,
        }
        if address == "":
            # "local" forces a fresh instance: a bare ray.init() would silently join a
            # cluster that someone else started on this machine.
            options |= {
                "address": "local",
                "include_dashboard": True,
                "dashboard_host": ray_params.dashboard_host,
            }
            if ray_params.node_ip in LOOPBACK:
                use_single_machine_mode()
            else:
                options["_node_ip_address"] = ray_params.node_ip
        else:
            if _host(address) in LOOPBACK:  # the run's own loopback Ray, from a stage process
                use_single_machine_mode()
            options["address"] = address
        ray.init(**options)
        started = True
    quiet_ray_logs()
    return {**describe_ray(), "started": started}


LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Ray's single-machine mode, the one it runs in on macOS and Windows: the node's address is
# loopback, and every server binds to it (GCS, raylet, object manager, workers, agents).
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def use_single_machine_mode() -> None:
    """Ray's single-machine mode for this process and every process it starts.

    On Linux Ray takes the machine's outbound address as the node's, turns a loopback
    `_node_ip_address` or bootstrap address into it too, and binds its gRPC servers to every
    interface. Its single-machine mode (SINGLE_MACHINE_ENV=0, read by Ray at import, so set
    here for this process and in the environment its children inherit) resolves the node to
    loopback instead, and then nothing listens on the network (measured: README, "A Ray
    cluster"). A process that joins such a Ray at 127.0.0.1 needs the same mode, or Ray
    dials the machine's address. It lasts for the process: a `ray start` run from it would
    refuse to join another node, so start cluster nodes from a clean environment.
    """

    os.environ[SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # already imported: read at import time


def _host(address: str) -> str:
    """The host of a `host:port` Ray address ("" for auto and ray:// addresses' schemes)."""
    if "://" in address or ":" not in address:
        return ""
    return address.rsplit(":", 1)[0].strip("[]")


def describe_ray() -> dict[str, Any]:
    """Address, dashboard URL and resources of the Ray this process is connected to."""

    resources = ray.cluster_resources()
    try:  # private API, and absent through Ray Client: the URL is a convenience only
        dashboard = ray._private.worker.get_dashboard_url() or ""
    except Exception:
        dashboard = ""
    return {
        "address": ray.get_runtime_context().gcs_address,
        "dashboard_url": f"http://{dashboard}" if dashboard else "",
        "num_cpus": resources.get("CPU", 0.0),
        "num_gpus": resources.get("GPU", 0.0),
    }


@contextmanager
def ray_session(ray_params: RayParams) -> Iterator[dict[str, Any]]:
    """`init_ray` for the duration of a stage; shuts Ray down only if this call started it."""

    info = init_ray(ray_params)
    try:
        yield info
    finally:
        if info["started"]:
            ray.shutdown()


@contextmanager
def run_ray(ray_params: RayParams, record: Path | None = None) -> Iterator[dict[str, Any]]:
    """One local Ray head for a whole pipeline run, so that one dashboard shows every stage.

    With `ray.address` "" (and no outer run's Ray), starts a local Ray in this process with
    its dashboard and points the stages at it ($SDPOSE_RAY_ADDRESS, inherited by DVC's stage
    commands); at the end, also on failure or Ctrl-C, shuts it down, which stops the
    processes it started (their pids are in `record`, JSON, with the address). A user's
    cluster (`auto`, `ray://`) or an outer run's Ray is used as it is and never stopped:
    then this yields {"address": ..., "started": False}.
    """

    outer = ray_params.address or os.environ.get(RUN_RAY_ENV, "")
    if outer or ray.is_initialized():
        yield {"address": outer, "dashboard_url": "", "started": False, "pids": []}
        return
    info = init_ray(ray_params, log_to_driver=False)  # the stages' output goes to their logs
    info["pids"] = ray_pids()
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(info, indent=2) + "\n")
    os.environ[RUN_RAY_ENV] = info["address"]
    try:
        yield info
    finally:
        os.environ.pop(RUN_RAY_ENV, None)
        ray.shutdown()


def ray_pids() -> list[int]:
    """Processes of the local Ray this process started (private API; [] if it moves)."""

    try:
        node = ray._private.worker._global_node
        return sorted(
            info.process.pid
            for infos in node.all_processes.values()
            for info in infos
            if info.process is not None
        )
    except Exception:
        return []
