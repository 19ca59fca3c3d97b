"""``scripts/screenshots``: PNGs of the web console for the README, taken in headless chromium from a
real running fleet (the demo's local stack: redis-server, broker, dispatcher, workers, aggregator,
producer and ``batchfleet web``)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click
from selenium.webdriver.remote.webdriver import WebDriver

from batchfleet_dev import REPO, SCRIPTS
from batchfleet_dev.browser import chromium

__all__ = ["take"]

_URL = re.compile(r"console: (http://127\.0\.0\.1:\d+)/")


def _console_url(log: Path, demo: subprocess.Popen[bytes], timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = _URL.search(log.read_text(errors="replace")) if log.exists() else None
        if found:
            return found.group(1)
        if demo.poll() is not None:
            raise RuntimeError(f"the demo exited: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    raise RuntimeError("the demo printed no console URL")


def _batch_with_a_failure(url: str) -> str:
    query = "/api/batches?topic=SCHEDULE-STATION-REALTIME-DATA&state=uploaded&limit=20"
    with urllib.request.urlopen(url + query, timeout=10) as reply:
        rows = json.load(reply)["rows"]
    for row in rows:
        with urllib.request.urlopen(f"{url}/api/batches/{row['batch_id']}", timeout=10) as reply:
            stations = json.load(reply)["stations"]
        if any(s["outcome"] == "failed" for s in stations) and any(s["outcome"] == "missing" for s in stations):
            return str(row["batch_id"])
    return str(rows[0]["batch_id"])


def _shoot(driver: WebDriver, path: Path, height: int | None = None) -> None:
    full = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1440, min(height or full, 2400))
    time.sleep(0.5)
    driver.save_screenshot(str(path))


def take(out_dir: Path, warmup_s: float) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / ".demo.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SCRIPTS), os.environ.get("PYTHONPATH", "")])))
    with open(log, "wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "batchfleet_dev.demo", "--duration", str(warmup_s + 120), "--plain"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    driver = None
    try:
        url = _console_url(log, demo)
        time.sleep(warmup_s)  # let the last-hour charts fill a little
        driver = chromium(1440, 1000)
        driver.get(url + "/")
        deadline = time.monotonic() + 30
        while int(driver.find_element("tag name", "body").get_attribute("data-updates") or 0) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the overview never updated")
            time.sleep(0.2)
        overview, batch = out_dir / "console-overview.png", out_dir / "console-batch.png"
        _shoot(driver, overview)
        driver.get(f"{url}/batches/{_batch_with_a_failure(url)}")
        _shoot(driver, batch, height=1500)
        return overview, batch
    finally:
        if driver is not None:
            driver.quit()
        demo.send_signal(signal.SIGINT)  # the demo stops everything it started
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:
            demo.kill()
        log.unlink(missing_ok=True)


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=REPO / "docs" / "img")
@click.option("--warmup", "warmup_s", type=float, default=240, help="seconds of demo traffic before the screenshots")
def main(out_dir: Path, warmup_s: float) -> None:
    """Run the demo, screenshot the console's overview and a batch page, stop the demo."""
    for path in take(out_dir, warmup_s):
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
