"""A local run opens no port to the network: every listener of the Ray it starts (GCS,
raylet, object manager, workers, dashboard and its agents) and of the DDP process group its
Ray Train workers form is on loopback, sampled while Ray Data and Ray Train work runs."""

from __future__ import annotations

import ipaddress
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from sdpose.config import RayParams

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def listeners(pids: set[int]) -> set[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket of `pids` and children."""
    family = set(pids)
    for pid in pids:
        try:
            family |= {child.pid for child in psutil.Process(pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            continue
    found = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in family:
            try:
                name = psutil.Process(conn.pid).name()
            except psutil.NoSuchProcess:
                name = "?"
            found.add((conn.laddr.ip, conn.laddr.port, name))
    return found


def is_loopback(address: str) -> bool:
    address = ipaddress.ip_address(address)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def ddp_sum_of_ranks() -> float:
    """A two-worker TorchTrainer run as the train stage builds it (its rendezvous config)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from sdpose.training.rendezvous import LoopbackTorchConfig, torch_config

    def all_reduce_ranks() -> None:  # nested: pickled by value (workers cannot import tests)
        import torch
        import torch.distributed as dist

        total = torch.tensor([float(dist.get_rank())])
        dist.all_reduce(total)
        time.sleep(1.5)  # long enough for the sampler to see the group's sockets
        if dist.get_rank() == 0:
            result.write_text(str(float(total.item())))

    result = Path(tempfile.mkdtemp(prefix="sdpose-loopback-")) / "sum.txt"
    config = torch_config("gloo")
    assert isinstance(config, LoopbackTorchConfig)  # every node of a local run is loopback
    trainer = TorchTrainer(
        all_reduce_ranks,
        torch_config=config,
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(storage_path=str(result.parent)),
    )
    trainer.fit()
    return float(result.read_text())


def test_every_listener_of_a_local_run_is_on_loopback():
    import ray

    from sdpose.ray_runtime import ray_pids, ray_session

    if ray.is_initialized():
        pytest.skip("a Ray started elsewhere in this process")
    seen: set[tuple[str, int, str]] = set()
    with ray_session(RayParams()) as info:
        assert info["address"].startswith("127.0.0.1:")
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                seen.update(listeners(set(ray_pids()) | {os.getpid()}))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:  # work that starts workers, Ray Data's executor and the object store
            rows = ray.data.range(2000).map_batches(lambda batch: batch).take_all()
            assert len(rows) == 2000
            assert ddp_sum_of_ranks() == 1  # two workers met (ranks 0 + 1) and all-reduced
            time.sleep(1)
        finally:
            stop.set()
            sampler.join()
    names = {name for _, _, name in seen}
    assert any("gcs" in name for name in names) and any("raylet" in name for name in names)
    exposed = sorted(item for item in seen if not is_loopback(item[0]))
    assert not exposed, f"listening beyond loopback: {exposed}"
