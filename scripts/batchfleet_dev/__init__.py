"""Development tools of batchfleet: the embedded local stack, the demo, the benchmark and the chaos run.

Not part of the installed package: they run from a checkout (``scripts/demo``, ``scripts/bench``,
``scripts/chaos``) with ``scripts/`` on the import path, and the test suite uses the local stack and
the process helpers.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
