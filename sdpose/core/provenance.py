"""Which code made an artifact: the sdpose version and the git commit of its source.

A model card, a training summary and shipped weights record it, so that a number can be
traced to the code that produced it. The commit is read from the repository holding the
installed package (an editable install or a checkout), not from the working folder, which
need not be a repository at all; `-dirty` marks uncommitted changes to tracked files.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import sdpose

PACKAGE_DIR = Path(sdpose.__file__).resolve().parent


def git_commit(folder: Path = PACKAGE_DIR) -> str | None:
    """HEAD of the repository holding `folder`, with `-dirty` for uncommitted changes; None
    outside a repository (a wheel install) or without git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if status.strip() else "")


def code_version() -> dict[str, str | None]:
    """{sdpose: package version, git_commit: the source's commit or None}."""
    return {"sdpose": sdpose.__version__, "git_commit": git_commit()}
