"""A ``torch.distributed`` process group among Ray actors, its store on one address.

Chapter 10 builds this step by step; chapters that need a group as given (22) call
these two functions inside their rank actors: rank 0 first opens the rendezvous, then
every rank joins at the address it returned.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import ray
import torch.distributed as dist


def open_rendezvous() -> tuple[socket.socket, str]:
    """A socket listening on this node's address, and the ``host:port`` other ranks
    dial.

    PyTorch's own store would listen on every interface of the machine; handed this
    socket (in :func:`join`), it listens only where the ranks look.
    """
    listener = socket.create_server((ray.util.get_node_ip_address(), 0))
    host, port = listener.getsockname()[:2]
    return listener, f"{host}:{port}"


def join(
    master: str,
    rank: int,
    world: int,
    listener: socket.socket | None = None,
    backend: str = "gloo",
) -> None:
    """Join the group of ``world`` ranks whose rank 0 serves the store at ``master``.
    Rank 0 passes the ``listener`` that :func:`open_rendezvous` gave it."""
    host, port = master.rsplit(":", 1)
    store = dist.TCPStore(
        host,
        int(port),
        world,
        is_master=rank == 0,
        master_listen_fd=listener.detach() if listener else None,
        timeout=timedelta(seconds=60),
    )
    dist.init_process_group(
        backend, store=store, rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
