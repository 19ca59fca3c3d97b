"""Least-privilege Redis: one ACL user per role, with only the commands and keys that role uses.

``batchfleet redis-acl`` prints them (an aclfile for ``redis-server --aclfile``, or ``ACL SETUSER``
lines for ``redis-cli``).  The key patterns come from :func:`batchfleet.keys.key_patterns` (any
shard count, the fleet's prefix); the commands are what each role sends, found in its code:

- every user: the connection (PING, CLIENT SETNAME, SELECT, HELLO/AUTH, TIME -- the start-up probe
  and the scripts' clock), and what a Redis Cluster client needs (COMMAND, CLUSTER SLOTS/SHARDS,
  READONLY, ASKING);
- the writing roles run their transitions as EVALSHA (SCRIPT LOAD/EXISTS after a restart's
  NOSCRIPT).  Redis checks every command a script calls, and every key it touches, against the
  user: so each role lists the commands its scripts call, and a role that lacks a script's keys
  cannot run that script (the worker cannot claim an upload: it has no lease or fence key);
- workers run arq (its claim, retry counter, finish, health-check key, and INFO/DBSIZE when it
  starts); the aggregator WAITs for replicas and may read INFO/ROLE; the dispatcher WAITs too
  (BATCHFLEET_INGEST_WAIT_REPLICAS).

Users: ``PREFIX-dispatcher``, ``PREFIX-worker``, ``PREFIX-aggregator``, ``PREFIX-reader`` (the
console without a token, ``status``, ``inspect``, ``health``) and ``PREFIX-operator`` (what the
reader may, plus the console's and the CLI's actions: replay a dead-lettered batch, mark a
quarantined message re-dispatched).  No user may run KEYS, SCAN, FLUSHALL, CONFIG, DEBUG, MONITOR,
SHUTDOWN, ACL, CLIENT KILL, MODULE, SCRIPT FLUSH or any command not listed here.  Passwords go in
as SHA-256 hashes (``#HEX``): the output holds no password.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

from batchfleet.errors import ConfigError
from batchfleet.keys import Keys, key_patterns

__all__ = ["MIN_PASSWORD_CHARS", "ROLES", "AclRole", "acl_rules", "password_variable", "read_passwords", "render", "user_name"]

MIN_PASSWORD_CHARS = 16

CONNECTION = ("ping", "echo", "hello", "auth", "client|setname", "select", "time")
CLUSTER = ("command", "cluster|slots", "cluster|shards", "readonly", "asking")
SCRIPTS = ("evalsha", "script|load", "script|exists")
# store/registry.py: beat, forget_process; live_processes for `batchfleet health ROLE` in the role's container
HEARTBEAT = ("set", "zadd", "zremrangebyscore", "del", "zrem", "zrange", "get")
LAYOUT = ("hsetnx", "hgetall")  # store/base.py: check_layout


@dataclass(frozen=True)
class AclRole:
    """One user: the commands it may send and the key kinds (of :func:`key_patterns`) it may
    read and write (``rw``) or only read (``ro``).  ``heartbeat``: it beats as this role."""

    role: str
    commands: tuple[str, ...]
    rw: tuple[str, ...]
    ro: tuple[str, ...] = ()
    heartbeat: bool = False


_READS = ("get", "hget", "hgetall", "hmget", "hlen", "exists", "ttl", "zrange", "zrevrange", "zrevrangebyscore", "zcard", "lrange")
_READABLE = (
    "meta", "inputs", "outcomes", "late", "payload", "due", "leases", "dead", "recent", "batches",
    "stats", "rates", "quarantine", "quarantined", "queue", "layout", "procs", "proc",
)  # fmt: skip

ROLES: dict[str, AclRole] = {
    role.role: role
    for role in (
        AclRole(
            "dispatcher",
            # load_offsets, open_batches, live_processes("worker"), WAIT (ingest replicas); create_batch.lua,
            # quarantine_message.lua: HGET HSET HINCRBY EXISTS EXPIRE ZADD ZCARD ZREMRANGEBYRANK SET(NX PX)
            (*SCRIPTS, *HEARTBEAT, *LAYOUT, "wait", "hmget", "zcard", "zrange", "get", "hget", "hset", "hincrby", "exists",
             "expire", "zremrangebyrank"),
            rw=("meta", "inputs", "due", "offsets", "queue", "stats", "batches", "arq_job", "quarantine", "quarantined", "layout",
                "procs"),
            ro=("leases", "proc"),
            heartbeat=True,
        ),
        AclRole(
            "worker",
            # arq: poll, claim (a plain arq worker: WATCH/MULTI), run (GET job, INCRBY/EXPIRE/SETEX retry),
            # finish (MULTI PEXPIRE SET DEL ZREM ZINCRBY EXEC), health check (PSETEX, DEL), start-up INFO/DBSIZE;
            # claim_jobs.lua, record_outcome.lua, split_group.lua: EXISTS ZSCORE SET HGET HLEN HEXISTS HSETNX
            # HINCRBY PTTL PEXPIRE ZADD LPUSH LTRIM
            (*SCRIPTS, *HEARTBEAT, *LAYOUT, "info", "dbsize", "zrangebyscore", "zcard", "zscore", "get", "incr", "incrby", "expire",
             "setex", "psetex", "pexpire", "pttl", "zincrby", "exists", "hget", "hlen", "hexists", "hsetnx", "hincrby",
             "lpush", "ltrim", "multi", "exec", "discard", "watch", "unwatch"),
            rw=("meta", "inputs", "outcomes", "late", "due", "ready", "stats", "queue", "queue_health", "arq_job",
                "arq_in_progress", "arq_retry", "arq_result", "arq_abort", "layout", "procs"),
            heartbeat=True,
        ),
        AclRole(
            "aggregator",
            # due_batches, next_due_ms, wait_ready (BLPOP), prune_batch_index, WAIT (+ INFO/ROLE: replicas;
            # CLUSTER NODES: on a cluster, the batch primary's replicas a failover could promote);
            # claim_batch.lua, freeze_payload.lua, ack_upload.lua, fail_upload.lua: ZSCORE HGET HSET HLEN
            # HEXISTS INCR HINCRBY ZADD ZREM GET SET HGETALL EXPIRE LPUSH LTRIM
            (*SCRIPTS, *HEARTBEAT, *LAYOUT, "wait", "info", "role", "cluster|nodes", "zrangebyscore", "zrange", "blpop", "exists",
             "zscore", "hget", "hset", "hlen", "hexists", "incr", "hincrby", "get", "expire", "lpush", "ltrim"),
            rw=("meta", "inputs", "outcomes", "late", "payload", "due", "leases", "ready", "dead", "recent", "batches",
                "fence", "stats", "rates", "layout", "procs"),
            heartbeat=True,
        ),
        AclRole("reader", _READS, rw=(), ro=_READABLE),
        AclRole(
            "operator",
            # the reader's reads; replay_batch.lua (HGET HSET HINCRBY ZREM ZADD); mark_redispatched (HSET)
            (*_READS, *SCRIPTS, "hset", "hincrby", "zrem", "zadd"),
            rw=("meta", "due", "dead", "stats", "quarantined"),
            ro=_READABLE,
        ),
    )
}  # fmt: skip


def user_name(prefix: str, role: str) -> str:
    return f"{prefix}-{role}"


def password_variable(role: str) -> str:
    """The line of the passwords file that holds ``role``'s password: ``REDIS_<ROLE>_PASSWORD``."""
    return f"REDIS_{role.upper()}_PASSWORD"


def acl_rules(prefix: str, role: str) -> list[str]:
    """The ACL rules of ``role`` (no user name, no password): ``resetkeys``, key patterns, commands."""
    spec = ROLES[role]
    patterns = key_patterns(prefix)
    rw = [patterns[kind] for kind in spec.rw]
    if spec.heartbeat:
        rw.append(Keys(prefix).proc(f"{role}:*"))  # its own heartbeats only
    ro = [patterns[kind] for kind in spec.ro if patterns[kind] not in rw]
    commands = (*CONNECTION, *CLUSTER, *spec.commands)
    return [
        "resetkeys",
        "resetchannels",
        *(f"~{p}" for p in rw),
        *(f"%R~{p}" for p in ro),
        "-@all",
        *(f"+{c}" for c in dict.fromkeys(commands)),
    ]


def _hash(password: str) -> str:
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def render(prefix: str, passwords: Mapping[str, str], *, fmt: str = "aclfile", admin_password: str | None = None) -> str:
    """Every role's user, as aclfile lines (``user NAME ...``, and the ``default`` user: off, or an
    administrator with ``admin_password``) or as ``ACL SETUSER`` commands (which leave ``default`` alone)."""
    lines = []
    for role in ROLES:
        rules = ["reset", "on", _hash(passwords[role]), *acl_rules(prefix, role)]
        head = "user" if fmt == "aclfile" else "ACL SETUSER"
        lines.append(" ".join([head, user_name(prefix, role), *rules]))
    if fmt == "aclfile":
        admin = f"on {_hash(admin_password)} ~* &* +@all" if admin_password else "off resetkeys resetchannels -@all"
        lines.insert(0, f"user default reset {admin}")
    return "\n".join(lines) + "\n"


def read_passwords(path: Path, *, generate: bool) -> tuple[dict[str, str], str | None, list[str]]:
    """(role -> password, the administrator's password or None, roles whose password was generated now)
    from ``path``: ``REDIS_<ROLE>_PASSWORD=...`` lines (an env file: compose's ``.env`` works), and
    ``REDIS_ADMIN_PASSWORD`` for the ``default`` user (optional).  With ``generate`` a missing or empty
    password is generated and appended to the file (created 0600).  Raises ConfigError."""
    if path.exists() and not path.is_file():
        raise ConfigError(f"{path}: not a file (the passwords file is an env file)")
    values = {k: v or "" for k, v in dotenv_values(path).items()} if path.exists() else {}
    if not path.exists() and not generate:
        raise ConfigError(f"{path}: no such passwords file (pass --generate to create it)")
    names = {role: password_variable(role) for role in ROLES}
    admin = values.get("REDIS_ADMIN_PASSWORD") or None
    for name in [*names.values(), "REDIS_ADMIN_PASSWORD"]:  # every given one checked before anything is written
        if values.get(name) or (name != "REDIS_ADMIN_PASSWORD" and not generate):
            _check(path, name, values.get(name, ""))
    passwords, generated = {}, []
    for role, name in names.items():
        value = values.get(name, "")
        if not value:
            value = secrets.token_urlsafe(24)
            generated.append(role)
            _append(path, f"{name}={value}\n")
        passwords[role] = value
    return passwords, admin, generated


def _check(path: Path, name: str, value: str) -> None:
    if not value:
        raise ConfigError(f"{path}: {name} is not set (set it, or pass --generate)")
    if len(value) < MIN_PASSWORD_CHARS:
        raise ConfigError(f"{path}: {name} is shorter than {MIN_PASSWORD_CHARS} characters")


def _append(path: Path, line: str) -> None:
    unterminated = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(("\n" if unterminated else "") + line)
