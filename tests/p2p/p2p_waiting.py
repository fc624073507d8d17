"""Waiting on conditions with deadlines (never bare sleeps) for the multi-node tests."""

from __future__ import annotations

import time


def wait_for(cond, timeout: float = 15.0, what: str = "condition"):
    """Poll `cond` until it is truthy or the deadline passes (then fail naming `what`)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
