"""The socket sampler sees what it must: a wildcard listener in a child, and one in a
child's own network namespace, which psutil, reading this process's namespace, would
miss, and which no other machine can reach."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager

import pytest
from listeners import ListenerSampler, _address

from helpers.machines import unavailable_reason

SERVE_ON_A_WILDCARD = (
    "import socket, sys, time\n"
    "server = socket.create_server(('0.0.0.0', 0))\n"
    "print(server.getsockname()[1], flush=True)\n"
    "sys.stdin.read()\n"
)


@contextmanager
def listening_child(prefix: list[str]):
    child = subprocess.Popen(
        [*prefix, sys.executable, "-c", SERVE_ON_A_WILDCARD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield child, int(child.stdout.readline())
    finally:
        child.kill()
        child.wait()


def test_the_socket_table_addresses_read_as_written():
    assert _address("0100007F:1F90") == ("127.0.0.1", 8080)
    assert _address("00000000000000000000000001000000:0050") == ("::1", 80)


def test_a_child_listening_on_every_interface_is_reported():
    with listening_child([]) as (child, port):
        sampler = ListenerSampler()
        sampler.sample()
    assert any(
        (s.pid, s.ip, s.port) == (child.pid, "0.0.0.0", port) for s in sampler.seen
    )
    assert any(f"0.0.0.0:{port} " in line for line in sampler.reachable)


def test_a_listener_in_another_network_namespace_is_seen():
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no network namespaces here: {reason}")
    # unshare execs the command, so the child's pid is the listener's.
    with listening_child(["unshare", "--user", "--map-root-user", "--net"]) as (
        child,
        port,
    ):
        sampler = ListenerSampler()
        sampler.sample()
    seen = [s for s in sampler.seen if (s.pid, s.port) == (child.pid, port)]
    assert seen, sampler.seen
    # Its namespace has only lo: the wildcard reaches no other machine.
    assert seen[0].loopback_only_network and not seen[0].reachable_from_other_machines
