"""lab.verify --step reads one key without Enter; a key typed before the prompt is not lost
(integration: a real pseudo-terminal, no VM)."""

from __future__ import annotations

import os
import pty
import sys
import threading

import pytest

from lab.run import live


@pytest.mark.integration
@pytest.mark.parametrize("typed, want", [(b"\r", "\n"), (b"q", "q")])
def test_a_key_typed_before_the_prompt_counts(monkeypatch: pytest.MonkeyPatch, typed: bytes, want: str) -> None:
    """Seen in the vm tier: Enter sent right after `next: baseline` arrived before the presenter set
    cbreak mode; tty.setcbreak's default (TCSAFLUSH) threw it away and the run waited for ever."""
    master, slave = pty.openpty()
    try:
        with os.fdopen(os.dup(slave), "r", closefd=True) as terminal:
            monkeypatch.setattr(sys, "stdin", terminal)
            os.write(master, typed)  # typed ahead, while the terminal is still in canonical mode
            got: list[str] = []
            reader = threading.Thread(target=lambda: got.append(live.read_key()), daemon=True)
            reader.start()
            reader.join(5)
            if reader.is_alive():
                os.write(master, b"x")  # let the thread end before the terminal closes
                reader.join(5)
            assert got[:1] == [want], f"the key typed ahead was lost (read afterwards: {got})"
    finally:
        os.close(master)
        os.close(slave)
