"""The sockets every process of a test run listens on, sampled while the processes run.

Ray's token protects Ray's ports; Horovod's rendezvous, Gloo, Spark's JVMs and
the Jupyter kernel open ports of their own. A one-off look from inside a
notebook sees only the processes it asks about, at one moment. This samples
every descendant of the test process, once a second, in whichever network
namespace each one lives (the simulated machines have their own), by reading
the kernel's socket tables the way ``ss -ltnp`` does.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass

import psutil

from helpers.network import is_loopback

TCP_LISTEN = "0A"  # the state column of /proc/net/tcp, from <net/tcp_states.h>


@dataclass(frozen=True)
class Listener:
    """One listening socket, the process that held it, and whether its network is
    private."""

    ip: str
    port: int
    pid: int
    process: str
    loopback_only_network: bool  # its network namespace has no interface but lo

    @property
    def reachable_from_other_machines(self) -> bool:
        """A wildcard in a namespace with only lo listens on loopback addresses
        alone."""
        return not (is_loopback(self.ip) or self.loopback_only_network)

    def __str__(self) -> str:
        return f"{self.ip}:{self.port} ({self.process[:60]}, pid {self.pid})"


def _address(hex_address: str) -> tuple[str, int]:
    """/proc/net/tcp's "0100007F:1F90" as ("127.0.0.1", 8080); the address is in host
    byte order."""
    hex_ip, hex_port = hex_address.split(":")
    raw = bytes.fromhex(hex_ip)
    # Each 32-bit word is little-endian on the machines we run on (x86-64, arm64).
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(words) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words), int(hex_port, 16)


def _listening_table(pid: int) -> dict[int, tuple[str, int]]:
    """Socket inode -> (ip, port) for every listening TCP socket in ``pid``'s network
    namespace."""
    table = {}
    for name in ("tcp", "tcp6"):
        path = f"/proc/{pid}/net/{name}"
        if name == "tcp6" and not os.path.exists(path):  # a kernel without IPv6
            continue
        with open(path) as rows:
            next(rows)  # the header
            for row in rows:
                fields = row.split()
                if fields[3] == TCP_LISTEN:
                    table[int(fields[9])] = _address(fields[1])
    return table


def _interfaces(pid: int) -> set[str]:
    """The network interfaces of ``pid``'s network namespace."""
    with open(f"/proc/{pid}/net/dev") as rows:
        return {row.split(":")[0].strip() for row in list(rows)[2:]}


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed since the listing
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def listeners(pids: list[int]) -> set[Listener]:
    """The listening sockets the processes hold now."""
    tables: dict[str, dict[int, tuple[str, int]]] = {}  # one per network namespace
    private: dict[str, bool] = {}
    found = set()
    for pid in pids:
        try:
            namespace = os.readlink(f"/proc/{pid}/ns/net")
            if namespace not in tables:
                tables[namespace] = _listening_table(pid)
                private[namespace] = _interfaces(pid) == {"lo"}
            held = _socket_inodes(pid) & tables[namespace].keys()
            if held:
                process = " ".join(psutil.Process(pid).cmdline()).strip()
        except (OSError, psutil.Error):  # it exited meanwhile
            continue
        found |= {
            Listener(*tables[namespace][inode], pid, process, private[namespace])
            for inode in held
        }
    return found


class ListenerSampler:
    """Samples the listening sockets of this process's descendants until stopped."""

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self.seen: set[Listener] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ListenerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval_s):
                return

    def sample(self) -> None:
        descendants = [p.pid for p in psutil.Process().children(recursive=True)]
        self.seen |= listeners(descendants)

    @property
    def beyond_loopback(self) -> list[str]:
        """Every socket seen on a wildcard or a network address, reachable or not."""
        return sorted(str(s) for s in self.seen if not is_loopback(s.ip))

    @property
    def reachable(self) -> list[str]:
        """Every socket seen that another machine could connect to."""
        return sorted(str(s) for s in self.seen if s.reachable_from_other_machines)
