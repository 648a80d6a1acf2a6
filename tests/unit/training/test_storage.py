"""Run storage: URIs survive pathlib, relative paths follow the working directory, and only
complete checkpoints count for resuming."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdpose.training.storage import RunStorage, storage_uri

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (Path("s3://bucket/runs"), "s3://bucket/runs"),  # pathlib made it s3:/bucket/runs
        ("gs://bucket/runs", "gs://bucket/runs"),
        ("file:///shared/runs", "/shared/runs"),
        (Path("models/ray"), "models/ray"),
        ("/nfs/sdpose/ray", "/nfs/sdpose/ray"),
    ],
)
def test_storage_uri(given, expected) -> None:
    assert storage_uri(given) == expected


def test_relative_storage_is_under_the_workdir(tmp_path) -> None:
    run = RunStorage.of(Path("models/ray"), "sdpose-train", tmp_path)
    assert run.storage_uri == str(tmp_path.resolve() / "models" / "ray")
    assert run.run_path == str(tmp_path.resolve() / "models" / "ray" / "sdpose-train")
    assert str(run) == run.run_path


def test_only_rays_record_counts_and_remove_clears_the_run(tmp_path) -> None:
    run = RunStorage.of(tmp_path / "ray", "sdpose-train", tmp_path)
    assert run.latest_checkpoint() is None  # no run yet
    folder = Path(run.run_path) / "epoch-0000"
    folder.mkdir(parents=True)
    (folder / "state.pt").write_bytes(b"x")
    # files without Ray's checkpoint manager snapshot: never registered, never restored
    assert run.latest_checkpoint() is None
    run.remove()
    assert not Path(run.run_path).exists()
    run.remove()  # absent is fine
