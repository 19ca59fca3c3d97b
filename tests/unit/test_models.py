"""Model processors without servers: what BATCHFLEET_PROCESSOR may name, set-up errors in one line,
and the slots that decide what a worker may claim."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from batchfleet.errors import ProcessorLoadError
from batchfleet.workers.processor import GroupCallError, load_processor, run_group_call
from batchfleet.workers.slots import Slots


class Both:
    def setup(self) -> None: ...

    def process(self, station_id: str, records: list[dict[str, Any]]) -> Any:
        return {"one": station_id}

    def process_group(self, stations: dict[str, Any]) -> dict[str, Any]:
        return {s: {"group": s} for s in stations}


class GroupOnly:
    async def process_group(self, stations: dict[str, Any]) -> dict[str, Any]:
        return {s: (ValueError("bad") if s == "bad" else {"g": s}) for s in stations}


class Neither:
    def setup(self) -> None: ...


class BadSetup:
    def setup(self) -> None:
        raise RuntimeError("line one\nline two")

    def process(self, station_id: str, records: list[dict[str, Any]]) -> Any:
        return None


def make_both() -> Both:
    return Both()


def plain(station_id: str, records: list[dict[str, Any]]) -> Any:
    return {"plain": station_id}


def test_a_plain_function_a_class_and_a_factory_are_processors() -> None:
    fn = load_processor(f"{__name__}:plain")
    assert fn.one is plain and fn.group is None and fn.setup_fn is None
    for ref in (f"{__name__}:Both", f"{__name__}:make_both"):
        model = load_processor(ref)
        assert model.one is not None and model.group is not None and model.setup_fn is not None and model.teardown_fn is None
        assert model("s1", []) == {"one": "s1"}, "process is the one-station call"


async def test_a_group_only_model_runs_one_station_as_a_group_of_one() -> None:
    model = load_processor(f"{__name__}:GroupOnly")
    one = model.station_fn()
    assert await one("s1", []) == {"g": "s1"}
    with pytest.raises(ValueError, match="bad"):
        await one("bad", [])


def test_a_model_without_process_or_process_group_is_refused() -> None:
    with pytest.raises(ProcessorLoadError, match="without process"):
        load_processor(f"{__name__}:Neither")


async def test_a_failing_set_up_is_one_line() -> None:
    with pytest.raises(ProcessorLoadError) as caught:
        await load_processor(f"{__name__}:BadSetup").setup()
    assert str(caught.value) == f"BATCHFLEET_PROCESSOR='{__name__}:BadSetup': setup() failed: RuntimeError: line one line two"


async def test_group_call_outcomes_are_classified_per_station() -> None:
    out = await run_group_call(GroupOnly().process_group, {"a": [], "bad": []}, budget_s=1, max_result_bytes=1000)
    assert (out["a"].status, out["a"].result) == ("ok", {"g": "a"})
    assert (out["bad"].status, out["bad"].error) == ("failed", "ValueError: bad")

    def not_a_mapping(stations: Any) -> Any:
        return [1]

    with pytest.raises(GroupCallError, match="expected a mapping"):
        await run_group_call(not_a_mapping, {"a": []}, budget_s=1, max_result_bytes=1000)


async def test_slots_count_running_waiting_and_claimed_calls() -> None:
    slots = Slots(2)
    assert slots.room() == 2
    slots.expect("job-1")
    assert slots.room() == 1, "a claimed job not started yet takes a slot"
    ticket = slots.reserve(3)
    slots.arrived("job-1")
    assert slots.room() == 0
    entered = asyncio.Event()
    gate = asyncio.Event()

    async def call() -> None:
        async with slots.hold(ticket):
            entered.set()
            await gate.wait()

    tasks = [asyncio.create_task(call()) for _ in range(3)]
    await entered.wait()
    assert (slots.running, slots.queued, slots.room()) == (2, 1, 1), "a running call does not hold back the next job"
    gate.set()
    await asyncio.gather(*tasks)
    slots.done(ticket)
    assert (slots.running, slots.queued, slots.room()) == (0, 0, 2)
    unused = slots.reserve(2)
    slots.done(unused)  # calls cancelled before they started give their reservation back
    assert slots.room() == 2 and Slots(0).room() > 1000


async def test_runners_abandon_an_overrunning_call_and_keep_their_number() -> None:
    from batchfleet.workers.processor import abandoned_threads, invoke, make_runners

    runners = make_runners(1)
    gate = threading.Event()
    before = abandoned_threads()
    try:
        hung = await invoke(gate.wait, (30,), budget_s=0.2, runners=runners)
        assert hung[0] == "timeout" and 0.2 <= hung[2] < 5
        assert abandoned_threads() == before + 1
        ok = await invoke(lambda x: x * 2, (21,), budget_s=5, runners=runners)  # a fresh runner took the place
        assert ok[:2] == ("ok", 42)
        err = await invoke(_raises, (), budget_s=5, runners=runners)
        assert err[0] == "error" and isinstance(err[1], KeyError)
    finally:
        gate.set()
        runners.close()
    for _ in range(100):  # the abandoned thread ends once its call returns
        if abandoned_threads() == before:
            break
        await asyncio.sleep(0.05)
    assert abandoned_threads() == before


def _raises() -> None:
    raise KeyError("k")


async def test_a_call_cancelled_before_a_runner_took_it_never_runs() -> None:
    from batchfleet.workers.processor import invoke, make_runners

    runners = make_runners(1)
    gate, ran = threading.Event(), []
    try:
        first = asyncio.create_task(invoke(gate.wait, (30,), budget_s=30, runners=runners))
        second = asyncio.create_task(invoke(ran.append, (1,), budget_s=30, runners=runners))
        await asyncio.sleep(0.1)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second  # cancelled while the runner is busy with the first
        gate.set()
        assert (await first)[0] == "ok"
        assert (await invoke(ran.append, (2,), budget_s=5, runners=runners))[0] == "ok"
        assert ran == [2]
    finally:
        gate.set()
        runners.close()
