"""Which addresses a process listens on, and whether they are loopback only.

A Level 1 library brings its own network stack: Ray's token authentication
does not cover the sockets Horovod or Spark open. The notebooks check those
sockets the same way the tests check Ray's.
"""

from __future__ import annotations

import ipaddress

import psutil


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1, their IPv4-mapped forms, and "localhost"."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def listening_addresses(pid: int | None = None) -> set[tuple[str, int]]:
    """The (ip, port) pairs a process (this one by default) accepts connections on."""
    connections = psutil.Process(pid).net_connections("inet")
    return {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}


def exposed(addresses: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """The addresses in ``addresses`` that other machines could reach."""
    return {(ip, port) for ip, port in addresses if not is_loopback(ip)}
