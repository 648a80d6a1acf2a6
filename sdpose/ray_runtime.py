"""One way for every stage to get a Ray: local, `auto` or `ray://`, quiet unless a person watches.

Stages call `ray_session(params.ray)` and never `ray.init` themselves, so the address rules,
the dashboard binding and the logging policy are the same for crops, train and tune, and a
Ray started by a caller (a test, a notebook, the Prefect flow) is reused instead of replaced.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sdpose.config import RayParams

# Ray's own loggers that narrate every execution at INFO; warnings and errors still show.
_NOISY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "filelock")


def progress_bars_wanted() -> bool:
    """Progress bars help a person at a terminal and only clutter CI logs and log files."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return sys.stderr.isatty() and not ci


def quiet_ray_logs() -> None:
    """Configure Ray Data's driver-side output: bars per `progress_bars_wanted`, no banners."""
    from ray.data import DataContext

    bars = progress_bars_wanted()
    context = DataContext.get_current()
    context.enable_progress_bars = bars
    context.enable_operator_progress_bars = bars
    context.print_on_execution_start = bars
    context.verbose_stats_logs = False
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def init_ray(ray_params: RayParams) -> dict[str, Any]:
    """Connect to (or start) the Ray of `ray_params.address`; idempotent.

    "" starts a new local Ray with its dashboard on `dashboard_host`; "auto" joins the
    cluster of this machine; "ray://host:port" goes through Ray Client. A Ray already
    initialised in this process is reused whatever the address says. Returns what a log
    line or a run record needs: address, dashboard URL, CPUs and GPUs, and `started`
    (whether this call started it, so that only the starter shuts it down).
    """
    import ray

    started = False
    if not ray.is_initialized():
        options: dict[str, Any] = {
            "logging_level": logging.WARNING,
            "log_to_driver": True,
            "ignore_reinit_error": True,
        }
        if ray_params.address == "":
            # "local" forces a fresh instance: a bare ray.init() would silently join a
            # cluster that someone else started on this machine.
            options |= {
                "address": "local",
                "include_dashboard": True,
                "dashboard_host": ray_params.dashboard_host,
            }
        else:
            options["address"] = ray_params.address
        ray.init(**options)
        started = True
    quiet_ray_logs()
    return {**describe_ray(), "started": started}


def describe_ray() -> dict[str, Any]:
    """Address, dashboard URL and resources of the Ray this process is connected to."""
    import ray

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
    import ray

    info = init_ray(ray_params)
    try:
        yield info
    finally:
        if info["started"]:
            ray.shutdown()
