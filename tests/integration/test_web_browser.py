"""The web console in a real headless chromium, against a real fleet.

Redis, the Kafka-protocol broker, a dispatcher, a worker, an aggregator and ``batchfleet web`` all run
as their own processes (as in production); the browser is Debian's chromium via selenium.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaProducer
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from batchfleet.store import BatchStore
from batchfleet_dev.browser import chromium
from batchfleet_dev.localstack import KafkaBroker, RedisServer, create_topics, free_port
from batchfleet_dev.procs import stop_all
from tests.integration import uploadsink
from tests.integration.fleet import TEST_SHARDS, Proc, make_settings, message, settings_env

pytestmark = pytest.mark.slow
T = TypeVar("T")
TOKEN = "browser-test-token-4f1c-0123"


@dataclass
class Console:
    url: str
    redis_url: str
    bootstrap: str
    topic: str
    sink: uploadsink.HttpSink
    procs: list[Proc]

    def produce(self, stations: list[str]) -> str:
        """Send one message (one batch: batching="message"); its batch id."""

        async def send() -> str:
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
            await producer.start()
            try:
                sent = await producer.send_and_wait(self.topic, message(stations))
            finally:
                await producer.stop()
            return f"{self.topic}:{sent.partition}:{sent.offset}"

        return asyncio.run(send())

    def read(self, fn: Callable[[BatchStore], Awaitable[T]]) -> T:
        async def go() -> T:
            async with BatchStore.from_url(self.redis_url, shards=TEST_SHARDS) as store:
                return await fn(store)

        return asyncio.run(go())

    def state(self, batch_id: str) -> str | None:
        return self.read(lambda s: s.batch_meta(batch_id)).get("state")

    def uploads_of(self, batch_id: str) -> list[int]:
        """HTTP status the sink answered to each upload of this batch, in order."""
        return [
            status for (_, body), status in zip(self.sink.requests, self.sink.statuses, strict=True) if body["batch_id"] == batch_id
        ]


def poll(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Wait for a truthy value (bounded; no fixed sleeps)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def console(broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    logs: Path = tmp_path_factory.mktemp("web-fleet")
    redis = RedisServer().start()
    topic = f"T-web-browser-{free_port()}"
    asyncio.run(create_topics(broker.bootstrap, [topic], partitions=1))
    sink = uploadsink.HttpSink().__enter__()
    port = free_port()
    settings = make_settings(
        redis.url,
        broker.bootstrap,
        [topic],
        sink.url,
        batching="message",
        batch_timeout_s=30.0,
        station_timeout_s=30.0,
        upload_max_attempts=1,
        web_port=port,
        web_token=TOKEN,
    )
    env = settings_env(settings)
    procs = [Proc(role, env, logs / f"{role}.log") for role in ("dispatcher", "worker", "aggregator", "web")]
    url = f"http://127.0.0.1:{port}"
    try:
        poll(lambda: _ready(url) or (not all(p.alive() for p in procs) and _dead(procs)), 60, "the console to answer")
        yield Console(url, redis.url, broker.bootstrap, topic, sink, procs)
    finally:
        stop_all(procs, timeout_s=15)
        sink.__exit__()
        redis.stop()


def _dead(procs: list[Proc]) -> bool:
    dead = [p for p in procs if not p.alive()]
    raise AssertionError("fleet process exited: " + "; ".join(f"{p.role}: {p.log_tail()}" for p in dead))


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    # chromium leaves its singleton-socket folder (org.chromium.Chromium.*) in TMPDIR after quit():
    # give it a TMPDIR of its own (short: the socket path must stay under 108 bytes) and remove it
    scratch = Path(tempfile.mkdtemp(prefix="chromium-"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TMPDIR", str(scratch))  # inherited by chromedriver and the chromium it starts
        driver = chromium(1400, 1000)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(scratch, ignore_errors=True)


def _heading(driver: WebDriver, expected: str) -> None:
    """After a click that submits a form: wait (bounded) until the new page's heading is ``expected``;
    the old page's elements go stale while the browser navigates."""

    def shown() -> bool:
        try:
            return bool(driver.find_element(By.TAG_NAME, "h1").text == expected)
        except (StaleElementReferenceException, NoSuchElementException):
            return False

    poll(shown, 15, f"the page headed {expected!r}")


def _text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def _texts(driver: WebDriver, element_id: str) -> list[str]:
    """The text of the element with this id, if the page has it; [] while the browser navigates."""
    try:
        return [str(e.text) for e in driver.find_elements(By.ID, element_id)]
    except StaleElementReferenceException:
        return []


def _rows(driver: WebDriver, table_id: str) -> list[list[str]]:
    """Cell texts of a table's body rows, read in one step (the live overview replaces its rows);
    a cell holding a progress bar reads as "value/max"."""
    rows: list[list[str]] = driver.execute_script(
        """return Array.from(document.querySelectorAll('#' + arguments[0] + ' tbody tr')).map(tr =>
             Array.from(tr.cells).map(td => {
               const bar = td.querySelector('progress');
               return bar ? bar.value + '/' + bar.max : td.textContent;
             }));""",
        table_id,
    )
    return rows


def _row_of(driver: WebDriver, table_id: str, first_cell: str) -> list[str] | None:
    return next((row for row in _rows(driver, table_id) if row and row[0] == first_cell), None)


def test_overview_shows_progress_and_counts_change_without_a_reload(console: Console, browser: WebDriver) -> None:
    browser.get(console.url + "/")
    poll(
        lambda: int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-updates") or 0) >= 1, 20, "the first live update"
    )
    browser.execute_script("window.__sameDocument = 'still here'")  # a reload would drop it
    uploaded_before = int(_text(browser, "t-uploaded"))
    batch_id = console.produce(["W-1", "LONG-1", "LONG-2", "LONG-3"])  # W-1 at once, LONG-* after 6 s

    def partial() -> list[str] | None:
        row = _row_of(browser, "open-batches", batch_id)
        return row if row is not None and row[3] == "1/4" else None

    row = poll(partial, 20, "the open batch at 1/4 on the overview")
    assert row[2] == "1/4" and row[6] == "open"  # the progress bar, and the state
    assert int(_text(browser, "t-open")) >= 1

    def uploaded() -> bool:
        return int(_text(browser, "t-uploaded")) == uploaded_before + 1 and _row_of(browser, "open-batches", batch_id) is None

    poll(uploaded, 30, "the overview to count the upload and drop the batch from the open ones")
    assert browser.execute_script("return window.__sameDocument") == "still here"
    assert console.state(batch_id) == "uploaded"
    # the rate chart and the outcome mix now hold this batch's 4 ok stations
    poll(lambda: browser.find_elements(By.CSS_SELECTOR, "#chart-rate rect.bar-ok"), 10, "a bar in the rate chart")
    assert int(_text(browser, "mix-ok").split()[0]) >= 4


def test_batch_page_lists_failed_stations_and_renders_markup_as_text(console: Console, browser: WebDriver) -> None:
    script = "RAISE-<script>window.__xss=1</script>"
    img = "RAISE-<img src=x onerror=window.__xss=2>"
    batch_id = console.produce(["S001", "RAISE-1", script, img])
    poll(lambda: console.state(batch_id) == "uploaded", 30, "the batch's upload")
    browser.get(f"{console.url}/batches/{batch_id}")
    failed = _row_of(browser, "stations", "RAISE-1")
    assert failed is not None and failed[1] == "failed" and failed[2] == "ValueError: bad reading at RAISE-1"
    for station in (script, img):
        row = _row_of(browser, "stations", station)
        assert row is not None, f"{station!r} is not listed as text"
        assert row[2] == f"ValueError: bad reading at {station}"
    assert browser.execute_script("return window.__xss === undefined")
    assert not browser.find_elements(By.CSS_SELECTOR, "#stations img, #stations script")
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in browser.page_source
    assert _text(browser, "batch-state") == "uploaded"
    assert _text(browser, "uploaded-by").startswith("aggregator@")


def test_replay_needs_the_token_and_reuploads_once(console: Console, browser: WebDriver) -> None:
    console.sink.always_fail = True
    batch_id = console.produce(["S001", "S002"])
    poll(lambda: console.state(batch_id) == "dead", 30, "the batch to be dead-lettered")
    console.sink.always_fail = False
    assert console.uploads_of(batch_id) == [503]

    # without the token: the click is refused and nothing happens
    browser.delete_all_cookies()
    browser.get(console.url + "/dead")
    browser.find_element(By.CSS_SELECTOR, f'button[data-batch="{batch_id}"]').click()
    _heading(browser, "Refused")  # the form posts: read the page it leads to, not the one it leaves
    assert _text(browser, "message") == "this action needs the console token: sign in first"
    assert console.state(batch_id) == "dead" and console.uploads_of(batch_id) == [503]

    # a wrong token does not sign in
    browser.get(console.url + "/login?next=/dead")
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.ID, "sign-in-submit").click()
    poll(lambda: _texts(browser, "login-error") == ["wrong token"], 10, "the sign-in page to say 'wrong token'")

    # with the token: signed in, the same click replays, and the batch is uploaded exactly once more
    field = browser.find_element(By.ID, "token")
    field.clear()
    field.send_keys(TOKEN)
    browser.find_element(By.ID, "sign-in-submit").click()
    poll(lambda: browser.current_url == console.url + "/dead", 10, "the sign-in to lead back to /dead")  # it navigates
    button = poll(lambda: browser.find_elements(By.CSS_SELECTOR, f'button[data-batch="{batch_id}"]'), 10, "the replay button")
    button[0].click()
    _heading(browser, "Replayed")
    assert _text(browser, "message") == f"{batch_id}: queued for upload"
    poll(lambda: console.state(batch_id) == "uploaded", 30, "the replayed batch's upload")
    assert console.uploads_of(batch_id) == [503, 200]

    # the dead-letter page no longer lists it; posting the same replay again (signed in, with the
    # form's CSRF token) is answered "not dead-lettered" and uploads nothing
    browser.get(console.url + "/dead")
    assert not browser.find_elements(By.CSS_SELECTOR, f'button[data-batch="{batch_id}"]')
    again = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        const body = new URLSearchParams({csrf: document.querySelector('input[name=csrf]').value});
        fetch(arguments[0], {method: 'POST', body}).then(r => r.text().then(t => done([r.status, t])));""",
        f"/dead/{batch_id}/replay",
    )
    assert again[0] == 409 and "not dead-lettered (state: uploaded)" in again[1]
    assert console.uploads_of(batch_id) == [503, 200]
