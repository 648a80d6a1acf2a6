"""Where the project's MLflow store is, and a client of it that is ready to use.

Shared by the registry (`sdpose.deploy.registry`) and the search's trial tracking
(`sdpose.tuning.tracking`): both write the same store, resolved the same way. The store
defaults to a SQLite file under the workdir (or the project folder a DVC experiment's run
names, `registry_root`), so a project folder carries its own runs and registry and nothing
is set globally (no `mlflow.set_tracking_uri`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from sdpose.config import Params
from sdpose.core.paths import resolve

if TYPE_CHECKING:
    from mlflow import MlflowClient

SQLITE_PREFIX = "sqlite:///"
# The project folder whose registry a run uses, when its stages run elsewhere (set by the
# flow for a DVC experiment's temporary workspace; see `registry_root`).
REGISTRY_ROOT_ENV = "SDPOSE_REGISTRY_ROOT"


def registry_root(workdir: Path) -> Path:
    """Where relative registry paths resolve: the workdir, unless REGISTRY_ROOT_ENV names
    the project folder (a DVC experiment's stages run in a temporary copy of it, and their
    student belongs in the project's registry, not in a folder DVC deletes)."""
    return Path(os.environ.get(REGISTRY_ROOT_ENV) or workdir).resolve()


def tracking_uri(params: Params, workdir: Path) -> str:
    """`registry.tracking_uri` with a relative SQLite path resolved against the registry
    root (`registry_root`).

    SQLAlchemy would resolve `sqlite:///mlruns.db` against the process's current folder;
    a stage must not depend on where it was started from.
    """
    workdir = registry_root(workdir)
    uri = params.registry.tracking_uri
    if uri.startswith(SQLITE_PREFIX):
        path = resolve(Path(workdir).resolve(), uri[len(SQLITE_PREFIX) :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return SQLITE_PREFIX + str(path)
    if "://" not in uri:  # a bare folder: MLflow's file store
        return str((Path(workdir) / uri).resolve())
    return uri


def open_client(uri: str) -> MlflowClient:
    """An MLflow client whose store is ready. A new SQLite store is created and migrated
    under a file lock: two runs of the pipeline opening the same fresh `mlruns.db` at once
    (concurrent DVC experiments) would otherwise both migrate it, and one fails with
    "duplicate column name"."""
    # importing mlflow takes 1.4 s, which the registry's importers that never open the
    # store (predict on a file, train without a models:/ init) would pay at start-up
    from mlflow import MlflowClient  # lazy: see above

    if not uri.startswith(SQLITE_PREFIX):
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    with FileLock(uri[len(SQLITE_PREFIX) :] + ".lock"):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)  # creates and migrates the store now
    return client
