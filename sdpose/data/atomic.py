"""Stage outputs appear whole or not at all.

A stage builds its output folder under a temporary name beside the final one and renames
it into place at the end, so an interrupted run leaves the previous output (or none), never
a folder of new and old files that looks complete. Renames within one file system are
atomic; the temporary name starts with a dot, so DVC and globs skip it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces `final`, on error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def remove_abandoned_staging(final: Path) -> None:
    """Delete the staging folders beside `final` left by runs that were killed.

    `staged_directory` removes its folder on any Python error, but not on SIGKILL or a power
    cut; a folder whose process (the pid in its name) is gone is abandoned.
    """
    final = Path(final)
    for folder in final.parent.glob(f".{final.name}.tmp-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or no pid this system can have
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
