"""The contract tables cover the scripts' headers: every documented "Returns" branch of every Lua
transition has at least one row, and no row claims a branch the header does not document.  A new
script, or a new branch in a header, without its contract test fails here."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import pytest
from redis.commands.core import AsyncScript

from batchfleet.store import BatchStore, make_client
from tests.contract.harness import UNTAGGED, Case, documented_branches, header, script_name, scripts


def table(name: str) -> ModuleType:
    return importlib.import_module(f"tests.contract.test_{name}")


def test_the_transition_scripts_are_found() -> None:
    assert len(scripts()) >= 9, scripts()
    assert all(scripts().values())


def test_every_script_the_store_registers_has_a_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    """What BatchStore registers is exactly the set of scripts with a documented contract."""
    registered: list[str] = []
    init = AsyncScript.__init__

    def spy(script: AsyncScript, client: Any, source: str | bytes) -> None:
        init(script, client, source)
        registered.append(script_name(source))

    monkeypatch.setattr(AsyncScript, "__init__", spy)
    BatchStore(make_client("redis://127.0.0.1:1/0"))  # registering does not connect
    assert sorted(registered) == sorted(scripts())


@pytest.mark.parametrize("name", sorted(scripts()))
def test_every_documented_branch_has_a_case(name: str) -> None:
    module = table(name)
    assert module.SCRIPT == name
    cases: list[Case] = module.CASES
    documented = set(scripts()[name])
    covered = {case.branch for case in cases}
    assert documented - covered == set(), f"{name}: documented branches without a contract case"
    assert covered - documented == set(), f"{name}: cases for branches the header does not document"
    assert len({case.id for case in cases}) == len(cases), f"{name}: two rows with the same branch and name"


SAMPLE = """--[[ sample: a made-up transition.

KEYS[1]  meta hash

Returns {"done", now_ms}   first line
     or {"again", first_ms}
     or {"fenced", owner} (a note) or {"gone"}
Invariant: prose that mentions {"not_a_branch"} is not part of the replies.
]]
return {'done', 1}
"""


def test_the_header_parser_reads_every_branch() -> None:
    assert documented_branches(header(SAMPLE, "sample")) == ["done", "again", "fenced", "gone"]
    assert documented_branches("Returns {job_id, score, ...}: untagged\n") == [UNTAGGED]
    assert documented_branches("no replies documented") == []
    with pytest.raises(LookupError):
        header(SAMPLE, "other")
