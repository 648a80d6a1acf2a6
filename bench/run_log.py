"""The learning benches' record of finished runs, so that a stopped bench resumes run by run
(a module, not a benchmark): DIR/runs.jsonl holds one line per finished run, keyed by what
makes two runs the same run (label, seed and every setting)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def run_key(label: str, seed: int, overrides: dict[str, Any]) -> str:
    """What makes two runs the same run: configuration, seed and every shared setting."""
    return json.dumps({"label": label, "seed": seed, "overrides": overrides}, sort_keys=True)


def finished_runs(log: Path) -> dict[str, Any]:
    """Runs recorded by earlier invocations (a torn last line from a kill is ignored)."""
    done: dict[str, Any] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[record["key"]] = record["result"]
    return done


def record_run(log: Path, key: str, result: Any) -> None:
    """Append one finished run; one line written with one call, flushed to disk."""
    with log.open("a") as handle:
        handle.write(json.dumps({"key": key, "result": result}) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


if __name__ == "__main__":  # `make bench` runs every bench/*.py
    print("bench/run_log.py: a helper of the learning benches, nothing to measure")
