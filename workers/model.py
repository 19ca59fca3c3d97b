"""Model processors: a processor with a life cycle and, optionally, group calls.

``BATCHFLEET_PROCESSOR=module:attr`` names either a plain station function (workers/processor.py) or
a class / zero-argument factory whose instance (the *model*) has any of::

    setup()                          sync or async, optional: once per worker process, before it takes
                                     jobs (load weights, warm up).  Health is not ready until it is done;
                                     one that raises stops the worker with one line, exit code 2.
    teardown()                       sync or async, optional: once, when the worker process stops.
    process(station_id, records)     sync or async: one station -> dict | None (as a plain function).
    process_group(stations)          sync or async: {station_id: records} -> {station_id: outcome}, one
                                     outcome per station: a dict (ok), None (no output) or an exception
                                     instance (that station failed).

It needs ``process`` or ``process_group`` (or both).  With ``process_group`` every job's stations go to
the model in one call (workers/group.py says what a call that raises or overruns means).  The
Protocols below state each part, so a model can be checked with mypy.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from batchfleet.errors import ProcessorLoadError
from batchfleet.importing import check_call

__all__ = [
    "GroupOutcome",
    "LoadedProcessor",
    "ProcessesGroups",
    "ProcessesStations",
    "SetsUp",
    "TearsDown",
    "model_processor",
    "outcome_of",
]

log = logging.getLogger(__name__)

GroupOutcome = dict[str, Any] | None | BaseException
"""What ``process_group`` returns per station: a result dict, None (no output) or the station's error."""


class ProcessesStations(Protocol):
    def process(self, station_id: str, records: list[dict[str, Any]], /) -> Any: ...


class ProcessesGroups(Protocol):
    def process_group(
        self, stations: Mapping[str, list[dict[str, Any]]], /
    ) -> Mapping[str, GroupOutcome] | Awaitable[Mapping[str, GroupOutcome]]: ...


class SetsUp(Protocol):
    def setup(self) -> Awaitable[None] | None: ...


class TearsDown(Protocol):
    def teardown(self) -> Awaitable[None] | None: ...


_NO_OUTCOME = "no outcome returned for this station by process_group"


def outcome_of(outcomes: Mapping[str, GroupOutcome], station_id: str) -> Any:
    """One station's value from a group call's mapping: its exception is raised, a missing one too."""
    if station_id not in outcomes:
        raise LookupError(_NO_OUTCOME)
    value = outcomes[station_id]
    if isinstance(value, BaseException):
        raise value
    return value


@dataclass(frozen=True)
class LoadedProcessor:
    """The processor of a worker process: a plain function (``one`` only) or a model's methods."""

    ref: str
    one: Callable[..., Any] | None = None  # process(station_id, records)
    group: Callable[..., Any] | None = None  # process_group(stations)
    setup_fn: Callable[[], Any] | None = None
    teardown_fn: Callable[[], Any] | None = None

    def station_fn(self) -> Callable[..., Any]:
        """The one-station call: ``process``, else ``process_group`` with a group of one."""
        if self.one is not None:
            return self.one
        group = self.group
        if group is None:  # model_processor refuses such a model
            raise ProcessorLoadError(f"{self.ref} has neither process nor process_group")
        if inspect.iscoroutinefunction(group):

            async def one_async(station_id: str, records: list[dict[str, Any]]) -> Any:
                return outcome_of(await group({station_id: records}), station_id)

            return one_async

        def one_sync(station_id: str, records: list[dict[str, Any]]) -> Any:
            outcomes = group({station_id: records})
            if inspect.isawaitable(outcomes):
                raise TypeError("process_group returned an awaitable from a sync method")
            return outcome_of(outcomes, station_id)

        return one_sync

    def __call__(self, station_id: str, records: list[dict[str, Any]]) -> Any:
        return self.station_fn()(station_id, records)

    async def setup(self) -> None:
        """Run the model's ``setup`` (a sync one on a thread, so signals are still served); its failure
        is a ProcessorLoadError (one line: the CLI exits 2)."""
        if self.setup_fn is None:
            return
        try:
            await _run(self.setup_fn)
        except Exception as exc:
            text = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise ProcessorLoadError(f"BATCHFLEET_PROCESSOR={self.ref!r}: setup() failed: {text}") from exc

    async def teardown(self) -> None:
        """Run the model's ``teardown``; a failure is logged (the process is stopping anyway)."""
        if self.teardown_fn is None:
            return
        try:
            await _run(self.teardown_fn)
        except Exception as exc:
            log.error("processor %s: teardown() failed: %s: %s", self.ref, type(exc).__name__, exc)


async def _run(fn: Callable[[], Any]) -> None:
    value = await fn() if inspect.iscoroutinefunction(fn) else await asyncio.to_thread(fn)
    if inspect.isawaitable(value):
        await value


def _method(model: Any, name: str, ref: str, arguments: str, positional: int) -> Callable[..., Any] | None:
    method = getattr(model, name, None)
    if method is None:
        return None
    if not callable(method):
        raise ProcessorLoadError(f"{ref}: {name} is a {type(method).__name__}, not a method")
    check_call(method, f"{ref}.{name}", f"{name}({arguments})", positional)
    return method  # type: ignore[no-any-return]


def model_processor(factory: Callable[[], Any], ref: str) -> LoadedProcessor:
    """Make the model (``factory()``: cheap, the weights load in ``setup``) and check its methods."""
    try:
        model = factory()
    except Exception as exc:
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ProcessorLoadError(f"making the model failed: {text}") from exc
    one = _method(model, "process", ref, "station_id, records", 2)
    group = _method(model, "process_group", ref, "stations", 1)
    if one is None and group is None:
        raise ProcessorLoadError(
            f"{ref} made a {type(model).__name__} without process(station_id, records) or process_group(stations)"
        )
    return LoadedProcessor(
        ref=ref,
        one=one,
        group=group,
        setup_fn=_method(model, "setup", ref, "", 0),
        teardown_fn=_method(model, "teardown", ref, "", 0),
    )
