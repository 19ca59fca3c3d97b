"""The package boundaries (one import package, services that never import each other, one Redis
client, one Kafka consumer) and the public surface, pinned."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import batchfleet

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("dispatcher", "workers", "aggregator")


def _imports(package: str) -> set[tuple[str, str]]:
    """(file, imported module) for every import in a folder of the repository."""
    found = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add((str(path.relative_to(REPO)), node.module))
            elif isinstance(node, ast.Import):
                found.update((str(path.relative_to(REPO)), a.name) for a in node.names)
    return found


def _service(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "batchfleet" and parts[1] in SERVICES else None


def test_services_never_import_each_other() -> None:
    for service in SERVICES:
        bad = [(f, m) for f, m in _imports(service) if _service(m) not in (None, service)]
        assert not bad, f"{service} imports another service: {bad}"


def test_one_import_package() -> None:
    """The role folders are mapped into batchfleet; nothing imports them as top-level modules."""
    for folder in (*SERVICES, "batchfleet", "scripts", "tests"):
        bad = [(f, m) for f, m in _imports(folder) if m.split(".")[0] in SERVICES]
        assert not bad, f"top-level service import (use batchfleet.<service>): {bad}"
    for service in SERVICES:
        link = REPO / "batchfleet" / service
        assert link.is_symlink() and link.resolve() == (REPO / service).resolve(), link
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["include"] == ["batchfleet", "batchfleet.*"]


def test_only_the_dispatcher_consumes_kafka() -> None:
    for package in ("workers", "aggregator", "batchfleet"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert "AIOKafkaConsumer" not in text, path


def test_only_the_store_issues_redis_commands() -> None:
    for package in (*SERVICES, "batchfleet"):
        for path in (REPO / package).rglob("*.py"):
            if "store" in path.relative_to(REPO).parts:
                continue
            text = path.read_text(encoding="utf-8")
            assert "import redis.asyncio" not in text and ".redis." not in text.replace("store.redis.", ""), path


def test_public_surface() -> None:
    assert sorted(batchfleet.__all__) == [
        "BatchStore",
        "BatchfleetError",
        "ConfigError",
        "Keys",
        "Outcome",
        "Settings",
        "TopicConfig",
        "UploadPayload",
        "load_settings",
    ]
    for name in batchfleet.__all__:
        assert hasattr(batchfleet, name)


def test_every_lua_script_states_its_contract() -> None:
    scripts = sorted((REPO / "batchfleet" / "lua").glob("*.lua"))
    assert len(scripts) >= 8
    for script in scripts:
        head = script.read_text(encoding="utf-8").split("]]", 1)[0]
        assert head.startswith("--[[ ") and "KEYS[1" in head and "ARGV[1]" in head and "Returns" in head, script
