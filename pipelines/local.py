"""Settings for running Prefect on one machine without a separate server.

Must run before `prefect` is imported: Prefect reads its settings at import time.
"""

from __future__ import annotations

import os
from pathlib import Path


def configure_local_prefect(workdir: Path) -> None:
    """Ephemeral-mode defaults: state under the project, no analytics, a patient start-up.

    Values already in the environment win, so a user pointing PREFECT_API_URL at a real
    server gets that server.
    """
    os.environ.setdefault("PREFECT_HOME", str(workdir.resolve() / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")
    # Two cores need well over Prefect's default 20 s to bring up the ephemeral API.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
