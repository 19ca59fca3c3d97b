"""The console's templates and assets ship in the wheel (pyproject package-data covers each file)."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_template_and_asset_is_package_data() -> None:
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"][
        "batchfleet"
    ]
    web = REPO / "batchfleet" / "web"
    files = [p for folder in ("templates", "static") for p in (web / folder).rglob("*") if p.is_file()]
    assert len(files) >= 10
    for path in files:
        rel = str(path.relative_to(REPO / "batchfleet"))
        assert any(fnmatch.fnmatch(rel, pattern) and rel.count("/") == pattern.count("/") for pattern in patterns), rel
