"""The DDP rendezvous of a run whose Ray lives on loopback listens on loopback too.

Ray Train's torch backend starts the process group with `tcp://` or `env://`: rank 0's
TCPStore server then listens on every interface (`::`), whatever address it was given, for
the seconds the workers take to meet, once per training run and per search trial
(measured during a quick start). A run whose every Ray node is at 127.0.0.1 (the local run
of `ray.node_ip: 127.0.0.1`, or a cluster of nodes started on loopback) needs nothing
beyond the machine, so here rank 0 binds the store's socket to 127.0.0.1 itself and hands
it to the TCPStore (`master_listen_fd`), and the workers join that store. Any other run
(nodes on other machines) keeps Ray's own rendezvous.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

import ray
import torch.distributed as dist
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

LOOPBACK_HOST = "127.0.0.1"
_listening: dict[str, socket.socket] = {}  # rank 0's bound socket, until the store owns it


def every_node_on_loopback() -> bool:
    """Whether every live node of the connected Ray has a loopback address."""

    addresses = [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]]
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def torch_config(backend: str) -> TorchConfig:
    """The TorchTrainer's config: the loopback rendezvous where every node is local."""
    if every_node_on_loopback():
        return LoopbackTorchConfig(backend=backend)
    return TorchConfig(backend=backend)


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """TorchConfig whose process group meets at a store listening on 127.0.0.1 only."""

    @property
    def backend_cls(self) -> type:
        return _LoopbackTorchBackend


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group: Any, backend_config: TorchConfig) -> None:

        port = worker_group.execute_single(0, _listen_on_loopback)
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get(
            [
                worker_group.execute_single_async(
                    rank,
                    _join_process_group,
                    backend=backend_config.backend or "gloo",
                    world_rank=rank,
                    world_size=len(worker_group),
                    port=port,
                    timeout_s=backend_config.timeout_s,
                )
                for rank in range(len(worker_group))
            ]
        )


def _listen_on_loopback() -> int:
    """Rank 0: a listening socket on 127.0.0.1 at a free port, kept for the store."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((LOOPBACK_HOST, 0))
    server.listen(128)
    _listening["store"] = server
    return server.getsockname()[1]


def _join_process_group(
    backend: str, world_rank: int, world_size: int, port: int, timeout_s: int
) -> None:

    timeout = datetime.timedelta(seconds=timeout_s)
    if world_rank == 0:
        server = _listening.pop("store")
        store = dist.TCPStore(
            LOOPBACK_HOST,
            port,
            world_size,
            is_master=True,
            timeout=timeout,
            wait_for_workers=False,
            master_listen_fd=server.detach(),  # the store owns the descriptor from here
        )
    else:
        store = dist.TCPStore(LOOPBACK_HOST, port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group(
        backend=backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout
    )
