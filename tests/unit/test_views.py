"""The CLI's rendering shows user data as text: rich markup in it is not applied, control characters
(terminal escape sequences, bidirectional overrides) are replaced by visible escapes."""

from __future__ import annotations

import io

from rich.console import Console

from batchfleet.views import printable, render_batch, render_dead, render_quarantine

MARKUP_ID = "S[bold red]X[/]"
ESCAPES = "boom [/x] \x1b[31mred\x1b]0;owned\x07 \u202egnp.exe \x9b2J"


def _rendered(renderable: object, *, terminal: bool) -> str:
    out = io.StringIO()
    Console(file=out, force_terminal=terminal, color_system="standard" if terminal else None, width=400).print(renderable)
    return out.getvalue()


def _batch() -> dict[str, object]:
    return {
        "batch_id": "T:0:1",
        "ttl_s": -1,
        "meta": {"state": "open", "expected": "2", "reason": "\x1b[2Jwiped"},
        "stations": [
            {"station": MARKUP_ID, "outcome": "failed", "error": ESCAPES, "worker": "h:1", "attempt": 1, "duration_ms": 1.0},
            {"station": "\x1b[1mS2", "outcome": "missing"},
        ],
    }


def test_printable_replaces_control_characters_only() -> None:
    assert printable("plain [b]text[/b] ü ✓") == "plain [b]text[/b] ü ✓"
    assert printable("a\x1b[31mb\x07c\x00\td\x7f\x9b") == "a\\x1b[31mb\\x07c\\x00\\x09d\\x7f\\x9b"
    assert printable("x\u202ey\u2066z") == "x\\u202ey\\u2066z"
    assert printable("line 1\nline 2") == "line 1\nline 2"


def test_markup_and_escapes_in_user_data_take_no_effect() -> None:
    for terminal in (False, True):
        text = _rendered(render_batch(_batch()), terminal=terminal)
        assert MARKUP_ID in text and "[/x]" in text, text  # shown as typed, not styled
        assert "\\x1b[31mred" in text and "\\x1b]0;owned\\x07" in text and "\\u202egnp.exe" in text and "\\x9b2J" in text
        assert "\\x1b[2Jwiped" in text and "\\x1b[1mS2" in text
        assert "\x07" not in text and "\u202e" not in text and "\x9b" not in text
        if not terminal:
            assert "\x1b" not in text
        else:  # the console's own styling only: no escape sequence from the data
            assert "\x1b[31mred" not in text and "\x1b]0;" not in text and "\x1b[2J" not in text
    dead = [{"batch_id": "T:0:1", "topic": "T", "upload_failures": 3, "last_error": ESCAPES}]
    quarantined = [{"id": "T:0:2", "reason": f"invalid JSON {MARKUP_ID} {ESCAPES}", "size": 10, "redispatched": None}]
    for renderable in (render_dead(dead), render_quarantine(quarantined)):
        text = _rendered(renderable, terminal=False)
        assert "[/x]" in text and "\x1b" not in text and "\\x1b[31mred" in text
