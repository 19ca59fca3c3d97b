"""The CLI against real Redis with hostile user data: station ids and errors holding rich markup and
terminal escape sequences are printed as text, and nothing crashes."""

from __future__ import annotations

import subprocess
import sys

from batchfleet.store import BatchStore
from batchfleet_dev.localstack import RedisServer
from tests.integration.fleet import REPO, make_settings, settings_env
from tests.integration.webdata import make_dead, record, spec

MARKUP_ID = "S[bold red]X[/]"
ERROR = "ValueError: bad [/x] reading \x1b[31mred\x1b]0;owned\x07"


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "batchfleet", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, (args, done.returncode, done.stdout, done.stderr)
    return done.stdout


async def test_inspect_and_status_show_user_data_as_text(redis_server: RedisServer, store: BatchStore) -> None:
    await store.create_batch(spec("CLI:0:0", [MARKUP_ID, "\x1b[1mS2"]))
    await record(store, "CLI:0:0", MARKUP_ID, "failed", ERROR)
    await store.create_batch(spec("CLI:0:1", ["S1"], timeout_s=0.001))
    await make_dead(store, "CLI:0:1", error=ERROR)
    env = settings_env(make_settings(redis_server.url, "127.0.0.1:9", ["CLI"], "file:///dev/null"))
    batch = _cli(env, "inspect", "batch", "CLI:0:0")
    assert MARKUP_ID in batch and "bad [/x] reading" in batch and "\\x1b[31mred\\x1b]0;owned\\x07" in batch, batch
    assert "\\x1b[1mS2" in batch
    dead = _cli(env, "inspect", "dead")
    assert "bad [/x] reading" in dead and "\\x1b[31mred" in dead, dead
    for out in (batch, dead, _cli(env, "inspect", "batches"), _cli(env, "status")):
        assert "\x1b" not in out and "\x07" not in out, out
    as_json = _cli(env, "inspect", "batch", "CLI:0:0", "--json")
    assert "\\u001b[31m" in as_json and "\x1b" not in as_json  # JSON escapes them itself
