"""Hosts as Linux network namespaces on one switch (batchfleet_dev.hosts).

No network namespaces (not root, no ``ip``): the tests fail with the reason; they never skip.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import subprocess
from collections.abc import Iterator

import pytest

from batchfleet_dev.hosts import Hosts, HostsUnavailable

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def _hosts(names: list[str], inside: str | None) -> Iterator[Hosts]:
    """The hosts, with this thread on host ``inside``; a test FAILS (never skips) where they cannot be made."""
    try:
        hosts = Hosts(names).create()
    except HostsUnavailable as exc:
        pytest.fail(f"the multi-host test needs Linux network namespaces, which cannot be made here: {exc}")
    with hosts, hosts.inside(inside) if inside else contextlib.nullcontext():
        yield hosts


def _netns_names() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


def _root_links() -> set[str]:
    listed = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in listed.splitlines()}


def test_hosts_reach_each_other_and_nothing_else_and_leave_nothing_behind() -> None:
    root_links = _root_links()
    with _hosts(["a", "b"], inside=None) as hosts:
        assert _root_links() == root_links, "the root namespace got an interface"
        with hosts.inside("b"):
            server = socket.create_server((hosts.address("b"), 0))
        with server, hosts.inside("a"):
            port = server.getsockname()[1]
            socket.create_connection((hosts.address("b"), port), timeout=2).close()
            with pytest.raises(OSError) as outside:  # no route out of the /24: refused locally, no packet sent
                socket.create_connection(("192.0.2.1", 80), timeout=2)
            assert outside.value.errno == errno.ENETUNREACH
            hosts.cut("b")
            with pytest.raises(OSError):  # SYNs vanish: a timeout (or "no route to host" once ARP gives up)
                socket.create_connection((hosts.address("b"), port), timeout=1)
            hosts.heal("b")
            socket.create_connection((hosts.address("b"), port), timeout=5).close()
        made = {hosts.netns("a"), hosts.netns("b"), hosts.switch}
        assert made <= _netns_names()
    assert not made & _netns_names(), "namespaces left behind"
