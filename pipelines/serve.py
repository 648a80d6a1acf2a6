"""Serve the deployment `sdpose/full-pipeline` from this process.

`flow.serve` rather than a work pool: one long-lived process on the machine that holds the
data and the venv, nothing to configure on the server side, and the runs execute in the
project folder where DVC and params.yaml live.
"""

from __future__ import annotations

from pathlib import Path

DEPLOYMENT_NAME = "full-pipeline"


def serve(workdir: Path) -> None:
    """Register the deployment with the Prefect API and run its flow runs until stopped."""
    from pipelines.flow import sdpose_flow  # lazy: Prefect costs 1.2 s; every command imports this

    sdpose_flow.serve(
        name=DEPLOYMENT_NAME,
        parameters={"overrides": {}, "workdir": str(workdir.resolve())},
        description="synth/COCO -> prepare -> crops -> train -> tune -> evaluate -> export",
        tags=["sdpose"],
    )
