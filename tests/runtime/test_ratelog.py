"""RateLimitedLog: a flood becomes burst lines plus one summary line per period."""

from __future__ import annotations

import logging

import pytest

from switchyard.runtime.ratelog import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_is_cut_to_the_burst_and_summarised(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = RateLimitedLog(logging.getLogger("t.flood"), burst=3, period=1.0, clock=clock, what="bad frames")
    with caplog.at_level(logging.INFO, logger="t.flood"):
        logged = [log("bad frame %d", i) for i in range(1000)]
        assert logged.count(True) == 3
        clock.now = 1.5
        log("next window")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "bad frame 0",
        "bad frame 1",
        "bad frame 2",
        "997 more bad frames suppressed in the last 1 s",
        "next window",
    ]
    assert log.total_suppressed == 997


def test_tracebacks_only_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("t.tb")
    log = RateLimitedLog(logger, burst=5)
    err = ValueError("boom")
    with caplog.at_level(logging.INFO, logger="t.tb"):
        log("bad: %s", err, exc=err)
    assert caplog.records[-1].exc_info is None
    with caplog.at_level(logging.DEBUG, logger="t.tb"):
        log("bad: %s", err, exc=err)
    assert caplog.records[-1].exc_info is not None


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        RateLimitedLog(logging.getLogger("t"), burst=0)
