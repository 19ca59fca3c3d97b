"""The package boundaries the design card fixes, and the public surface, pinned."""

from __future__ import annotations

import ast
from pathlib import Path

import batchfleet

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("dispatcher", "workers", "aggregator")


def _imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add((str(path.relative_to(REPO)), node.module.split(".")[0]))
            elif isinstance(node, ast.Import):
                found.update((str(path.relative_to(REPO)), a.name.split(".")[0]) for a in node.names)
    return found


def test_services_never_import_each_other() -> None:
    for service in SERVICES:
        others = set(SERVICES) - {service}
        bad = [(f, m) for f, m in _imports(service) if m in others]
        assert not bad, f"{service} imports another service: {bad}"


def test_only_the_dispatcher_consumes_kafka() -> None:
    for package in ("workers", "batchfleet"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if path.name in ("chaos.py", "bench.py", "demo.py", "localstack.py", "ops.py", "sample.py"):
                continue  # tools that produce test data or re-dispatch; none consumes as the fleet
            assert "AIOKafkaConsumer" not in text, path


def test_only_the_store_issues_redis_commands() -> None:
    for package in (*SERVICES, "batchfleet"):
        for path in (REPO / package).rglob("*.py"):
            if path.name in ("store.py", "localstack.py", "chaos.py", "bench.py"):
                continue  # the store; and the test-stack/benchmark tools that measure Redis itself
            text = path.read_text(encoding="utf-8")
            assert "import redis.asyncio" not in text and ".redis." not in text.replace("store.redis.", ""), path


def test_public_surface() -> None:
    assert sorted(batchfleet.__all__) == [
        "BatchStore", "BatchfleetError", "ConfigError", "Keys", "Outcome", "Settings", "TopicConfig",
        "UploadPayload", "load_settings",
    ]
    for name in batchfleet.__all__:
        assert hasattr(batchfleet, name)


def test_every_lua_script_states_its_contract() -> None:
    scripts = sorted((REPO / "batchfleet" / "lua").glob("*.lua"))
    assert len(scripts) >= 8
    for script in scripts:
        head = script.read_text(encoding="utf-8").split("]]", 1)[0]
        assert head.startswith("--[[ ") and "KEYS[1" in head and "ARGV[1]" in head and "Returns" in head, script
