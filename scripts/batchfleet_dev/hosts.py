"""Linux network namespaces as "hosts" on one private switch, with links that can be cut and healed.

Used by the multi-host partition test (tests/integration/test_hosts.py).  Needs root (or
CAP_SYS_ADMIN + CAP_NET_ADMIN) and ``ip`` (iproute2); :func:`check_available` says why not.

Design:

- **The switch is a namespace of its own** (``<prefix>sw``) holding one Linux bridge (``br0``, no
  address).  Every host is a namespace (``<prefix><host>``) with ``lo`` and ``eth0``, the inner end
  of a veth pair whose outer end (the host's *port*, ``p-<host>``) is plugged into the bridge.  Both
  ends are created directly in their namespaces (``ip -n SWITCH link add ... peer ... netns HOST``),
  so the root namespace never gets an interface, an address or a route: nothing of the machine's own
  networking changes, and a crashed run cannot leave anything there.
- **Address plan**: :data:`SUBNET` (``10.213.15.0/24``), host *i* (in the order given) gets
  ``10.213.15.(10 + i)``.  The subnet exists only on the ``eth0`` of the namespaces created here;
  they have no default route, so a host can reach only its own loopback and the other hosts of the
  same run, and anything else fails with "network unreachable".  Each run has its own switch, so
  parallel runs reuse the same subnet without ever seeing each other.
- **Unique names**: every namespace name starts with a per-run prefix ``bf<pid>x<n>-`` (``n``
  counts the host sets of one process), so parallel runs never collide.  Teardown deletes exactly
  the namespaces this run created, by name; the veth pairs and the bridge go with them.
- **Cut / heal**: :meth:`Hosts.cut` sets the host's switch port down (a cable pulled at the switch):
  nothing the host sends gets out and nothing reaches it; no RST, no ICMP, both sides learn of it
  only by their own timeouts, like a real partition.  :meth:`Hosts.heal` sets the port up again.
  (``tc netem loss 100%`` would do the same without the carrier change, but this kernel has no
  ``sch_netem``; the port-down cut needs nothing but ``ip``.)
- **Processes** run in a host with ``ip netns exec NS CMD`` (:meth:`Hosts.command_prefix`, passed to
  :class:`~batchfleet_dev.procs.RoleProcess`); ``ip`` execs the command itself, so the PID is the
  command's.  The calling thread can join a host for a while with :meth:`Hosts.inside` (``setns``),
  e.g. a test that produces to Kafka and serves an HTTP sink from a "client" host.
- **Teardown on every path**: :class:`Hosts` is a context manager, registers an ``atexit`` hook and,
  while it lives, turns a default-handled SIGTERM into ``SystemExit`` so ``finally`` blocks run.
  Before deleting a namespace it SIGKILLs, by PID, any process still inside it (only ever processes
  this run started there: the namespace is ours), never this process itself.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import itertools
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType, TracebackType
from typing import Any

__all__ = ["SUBNET", "Hosts", "HostsUnavailable", "check_available"]

SUBNET = "10.213.15"  # /24, used only inside namespaces created here
_FIRST_HOST = 10
_CLONE_NEWNET = 0x40000000
_sets = itertools.count()


class HostsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no ``ip``, no netns support)."""


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise HostsUnavailable(f"`ip {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def check_available() -> None:
    """Raise :class:`HostsUnavailable` with the reason when namespaces cannot be made here."""
    if shutil.which("ip") is None:
        raise HostsUnavailable("no `ip` command (install iproute2: apt-get install -y iproute2)")
    if os.geteuid() != 0:
        raise HostsUnavailable(f"network namespaces need root (running as uid {os.geteuid()})")
    probe = f"bf{os.getpid()}probe{next(_sets)}"
    _ip("netns", "add", probe)
    _ip("netns", "del", probe)


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise HostsUnavailable(f"setns failed: {os.strerror(err)}")


class Hosts:
    """A set of namespace "hosts" on one switch; a context manager that removes everything it made."""

    def __init__(self, names: Sequence[str], *, prefix: str | None = None) -> None:
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"host names must be unique and non-empty: {names!r}")
        if len(names) > 200:
            raise ValueError("at most 200 hosts fit the /24")
        too_long = [n for n in names if len(f"p-{n}") > 15]
        if too_long:
            raise ValueError(f"host names too long for an interface name (max 13 chars): {too_long}")
        self.names = list(names)
        self.prefix = prefix or f"bf{os.getpid()}x{next(_sets)}-"
        self.switch = f"{self.prefix}sw"
        self._created: list[str] = []
        self._cut: set[str] = set()
        self._closed = False
        self._old_sigterm: Callable[[int, FrameType | None], Any] | int | None = None

    # -- names and addresses -------------------------------------------------------------------
    def netns(self, host: str) -> str:
        """The namespace name of a host."""
        self._known(host)
        return f"{self.prefix}{host}"

    def address(self, host: str) -> str:
        """The host's IPv4 address in :data:`SUBNET`."""
        self._known(host)
        return f"{SUBNET}.{_FIRST_HOST + self.names.index(host)}"

    def command_prefix(self, host: str) -> list[str]:
        """Prepend to a command to run it inside the host."""
        return ["ip", "netns", "exec", self.netns(host)]

    def _known(self, host: str) -> None:
        if host not in self.names:
            raise KeyError(f"no host {host!r} (hosts: {self.names})")

    @staticmethod
    def _port(host: str) -> str:
        return f"p-{host}"

    # -- life cycle ------------------------------------------------------------------------------
    def __enter__(self) -> Hosts:
        return self if self._created else self.create()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def create(self) -> Hosts:
        """Make the switch and every host; on any failure, remove what was made and raise."""
        check_available()
        atexit.register(self.close)
        self._catch_sigterm()
        try:
            self._add_netns(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for host in self.names:
                self._add_host(host)
        except BaseException:
            self.close()
            raise
        return self

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _add_host(self, host: str) -> None:
        ns, port = self.netns(host), self._port(host)
        self._add_netns(ns)
        _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")

    def close(self) -> None:
        """Remove every namespace this run created (idempotent; safe from atexit)."""
        if self._closed:
            return
        self._closed = True
        for name in reversed(self._created):
            self._kill_inside(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        self._created.clear()
        self._restore_sigterm()
        atexit.unregister(self.close)

    @staticmethod
    def _kill_inside(name: str) -> None:
        """SIGKILL, by PID, processes left running in one of our namespaces (never ourselves)."""
        done = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False)
        for pid in (int(p) for p in done.stdout.split() if p.isdigit()):
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _catch_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

            def on_sigterm(signum: int, frame: FrameType | None) -> None:
                raise SystemExit(128 + signum)

            self._old_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    # -- partitions ------------------------------------------------------------------------------
    def cut(self, host: str) -> None:
        """Take the host's switch port down: from now on it can reach no other host, nor they it."""
        self._known(host)
        _ip("-n", self.switch, "link", "set", self._port(host), "down")
        self._cut.add(host)

    def heal(self, host: str) -> None:
        """Put the host's switch port back up."""
        self._known(host)
        _ip("-n", self.switch, "link", "set", self._port(host), "up")
        self._cut.discard(host)

    def is_cut(self, host: str) -> bool:
        return host in self._cut

    # -- joining a host ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def inside(self, host: str) -> Iterator[None]:
        """Run the calling thread inside the host's namespace for the duration (sockets opened
        meanwhile stay in it); threads started meanwhile inherit it."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(f"/run/netns/{self.netns(host)}", os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)
