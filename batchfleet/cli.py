"""``batchfleet``: one command, a subcommand per role.

Thin entry points: parse settings (environment ``BATCHFLEET_*``, flags override), configure
logging, run.  Service packages are imported inside their subcommand only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from batchfleet.errors import BatchfleetError
from batchfleet.logs import configure_logging
from batchfleet.settings import Settings, load_settings

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


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
    except BatchfleetError as exc:
        raise click.ClickException(str(exc)) from exc
    configure_logging(settings.log_format, settings.log_level, role)
    return settings


def _run(role: str, flags: dict[str, Any], serve: Callable[[Settings], None]) -> None:
    settings = _settings(role, **flags)
    try:
        serve(settings)
    except BatchfleetError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
@click.version_option(package_name="batchfleet")
def main() -> None:
    """Kafka -> batches -> per-station arq jobs -> one upload per batch."""


@main.command()
@common_options
def dispatcher(**flags: Any) -> None:
    """Consume Kafka and dispatch batches (one member of the consumer group)."""
    from batchfleet.runtime import run_until_signal
    from dispatcher.main import serve

    _run("dispatcher", flags, lambda s: run_until_signal(lambda stop: serve(s, stop)))


@main.command()
@common_options
@click.option("--burst", is_flag=True, help="exit when the queue is empty")
def worker(burst: bool, **flags: Any) -> None:
    """Run station jobs (an arq worker; also `arq workers.WorkerSettings`)."""
    from workers.main import serve

    _run("worker", flags, lambda s: serve(s, burst=burst))


@main.command()
@common_options
def aggregator(**flags: Any) -> None:
    """Finalize complete or overdue batches and upload each exactly once."""
    from aggregator.main import serve
    from batchfleet.runtime import run_until_signal

    _run("aggregator", flags, lambda s: run_until_signal(lambda stop: serve(s, stop)))


@main.command()
@click.argument("role", type=click.Choice(["dispatcher", "worker", "aggregator"]))
@click.option("--redis-url", help="Redis URL [BATCHFLEET_REDIS_URL]")
@click.option("--name", help="HOST:PID of the process to check (default: any ROLE process on this host)")
def health(role: str, redis_url: str | None, name: str | None) -> None:
    """Exit 0 when this host's ROLE process has a live heartbeat, else 1 (a container probe)."""
    import asyncio

    from batchfleet.ops import check_health

    settings = _settings("health", redis_url=redis_url)
    ok, message = asyncio.run(check_health(settings, role, name))
    click.echo(message)
    sys.exit(0 if ok else 1)


@main.command()
@click.argument("batch_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="replay every dead-lettered batch")
@click.option("--redis-url", help="Redis URL [BATCHFLEET_REDIS_URL]")
def replay(batch_ids: tuple[str, ...], replay_all: bool, redis_url: str | None) -> None:
    """Re-upload dead-lettered batches (same body, same Idempotency-Key)."""
    import asyncio

    from batchfleet.ops import replay as replay_batches

    if not batch_ids and not replay_all:
        raise click.UsageError("name BATCH_ID(s) or pass --all")
    settings = _settings("replay", redis_url=redis_url)
    results = asyncio.run(replay_batches(settings, list(batch_ids), replay_all))
    failed = False
    for bid, ok, state in results:
        click.echo(f"{bid}: {'queued for upload' if ok else f'not dead-lettered (state: {state})'}")
        failed = failed or not ok
    if not results:
        click.echo("no dead-lettered batches")
    sys.exit(1 if failed else 0)


@main.command()
@click.option("--duration", type=float, default=0, help="seconds to run (0 = until Ctrl-C)")
@click.option("--stations", type=int, default=24, help="stations per realtime message")
@click.option("--workers", "worker_count", type=int, default=2, help="worker processes")
@click.option("--plain", is_flag=True, help="print progress lines instead of the live view")
def demo(duration: float, stations: int, worker_count: int, plain: bool) -> None:
    """Start a local stack (redis-server, Kafka-protocol broker, the fleet, a producer) and watch it."""
    from batchfleet.demo import run_demo

    configure_logging("human", "WARNING", "demo")
    sys.exit(run_demo(duration_s=duration, stations=stations, workers=worker_count, plain=plain))


if __name__ == "__main__":  # pragma: no cover
    main()
