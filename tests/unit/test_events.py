"""The event feed (server/events.py) and the log lines it writes (server/logs.py)."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from quorumkv.server.events import EventFeed
from quorumkv.server.logs import HumanFormatter, JsonFormatter


class _Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.25

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A private logger writing JSON lines to a buffer (the root logger is left alone)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test.events.feed")
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log, out
    log.handlers.clear()


def _feed(logger: logging.Logger, capacity: int = 500) -> EventFeed:
    return EventFeed(capacity=capacity, logger=logger, clock=_Clock())


def test_events_are_numbered_from_one_and_carry_their_shape(
        logger: tuple[logging.Logger, io.StringIO]) -> None:
    feed = _feed(logger[0])
    assert feed.last_seq == 0 and feed.recent() == []
    feed.record("became_leader", "became the leader (term 3)", term=3, previous_term=2)
    feed.record("peer_health", "peer n2 is failed (was inactive)", level=logging.WARNING,
                peer="n2", state="failed")
    events = feed.recent()
    assert [e["seq"] for e in events] == [1, 2]
    assert feed.last_seq == 2
    first = events[0]
    assert set(first) == {"seq", "time", "kind", "level", "message", "fields"}
    assert first["kind"] == "became_leader" and first["level"] == "info"
    assert first["message"] == "became the leader (term 3)"
    assert first["fields"] == {"term": 3, "previous_term": 2}
    assert isinstance(first["time"], float) and events[1]["time"] > first["time"]
    assert events[1]["level"] == "warning"
    json.dumps(events)  # served as JSON as it is


def test_fields_become_plain_json_values(logger: tuple[logging.Logger, io.StringIO]) -> None:
    feed = _feed(logger[0])
    feed.record("member_added", "n4 added", members=("n1", "n4"), ids={4},
                where={"a": (1, 2)}, other=object(), nothing=None)
    fields = feed.recent()[0]["fields"]
    assert fields["members"] == ["n1", "n4"] and fields["ids"] == [4]
    assert fields["where"] == {"a": [1, 2]} and isinstance(fields["other"], str)
    assert fields["nothing"] is None


def test_the_feed_is_bounded_and_keeps_the_newest(
        logger: tuple[logging.Logger, io.StringIO]) -> None:
    feed = _feed(logger[0], capacity=5)
    for i in range(12):
        feed.record("k", f"event {i}")
    events = feed.recent(limit=100)
    assert [e["seq"] for e in events] == [8, 9, 10, 11, 12]
    assert feed.last_seq == 12 and feed.capacity == 5
    with pytest.raises(ValueError):
        EventFeed(capacity=0)


def test_since_and_limit(logger: tuple[logging.Logger, io.StringIO]) -> None:
    feed = _feed(logger[0], capacity=10)
    for i in range(8):
        feed.record("k", f"event {i}")

    def seqs(since: int = 0, limit: int = 200) -> list[int]:
        return [e["seq"] for e in feed.recent(since, limit)]

    assert seqs(5) == [6, 7, 8]
    assert seqs(8) == []
    assert seqs(0, 3) == [6, 7, 8]  # more match than asked: the newest ones
    assert seqs(2, 2) == [7, 8]
    assert seqs(0, 0) == []
    # A poller of an earlier run of the node (numbers start again after a restart).
    assert seqs(100) == [1, 2, 3, 4, 5, 6, 7, 8]
    for i in range(6):
        feed.record("k", f"later {i}")
    assert seqs(1) == list(range(5, 15))  # what fell off the feed is gone
    assert seqs(12) == [13, 14]


def test_what_recent_returns_is_a_copy(logger: tuple[logging.Logger, io.StringIO]) -> None:
    feed = _feed(logger[0])
    feed.record("k", "m", a=1)
    got = feed.recent()
    got[0]["fields"]["a"] = 2
    got[0]["kind"] = "changed"
    assert feed.recent()[0]["fields"] == {"a": 1} and feed.recent()[0]["kind"] == "k"


def test_each_event_is_logged_once_as_one_json_line(
        logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logger
    feed = _feed(log)
    feed.record("snapshot_created", "snapshot at index 100 saved", index=100,
                size_bytes=4096, duration_s=0.01)
    feed.record("lease_expired", "lease 7 expired", level=logging.DEBUG, lease=7)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "snapshot_created" and first["level"] == "info"
    assert first["msg"] == "snapshot at index 100 saved"
    assert first["logger"] == "test.events.feed"
    assert (first["index"], first["size_bytes"], first["duration_s"]) == (100, 4096, 0.01)
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert second["level"] == "debug" and second["lease"] == 7


def test_a_level_below_the_loggers_is_kept_in_the_feed_but_not_logged(
        logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logger
    log.setLevel(logging.INFO)
    feed = _feed(log)
    feed.record("lease_expired", "lease 7 expired", level=logging.DEBUG, lease=7)
    assert out.getvalue() == ""
    assert feed.recent()[0]["level"] == "debug"


def _record(msg: str, *, event: str | None = None, fields: object = None,
            exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("quorumkv.x", logging.WARNING, __file__, 1, msg, None,
                               exc_info)
    if event is not None:
        record.event = event
    if fields is not None:
        record.fields = fields
    return record


def test_json_formatter_shape() -> None:
    fmt = JsonFormatter()
    plain = json.loads(fmt.format(_record("hello")))
    assert set(plain) == {"ts", "level", "logger", "msg"}
    assert plain["level"] == "warning" and plain["logger"] == "quorumkv.x"
    evented = json.loads(fmt.format(_record("peer n2 is failed", event="peer_health",
                                            fields={"peer": "n2", "msg": "clash"})))
    assert evented["event"] == "peer_health" and evented["peer"] == "n2"
    assert evented["msg"] == "peer n2 is failed"  # a field never overwrites the line's own
    failed = json.loads(fmt.format(_record("oops", exc=True)))
    assert "RuntimeError: boom" in failed["exc"]
    assert "\n" not in fmt.format(_record("oops", exc=True))


def test_human_formatter_appends_fields() -> None:
    fmt = HumanFormatter()
    line = fmt.format(_record("became the leader", event="became_leader",
                              fields={"term": 3, "leader": "n 1", "empty": ""}))
    assert "WARNING quorumkv.x: became the leader" in line
    assert line.endswith('term=3 leader="n 1" empty=""')
    assert fmt.format(_record("plain")).endswith("quorumkv.x: plain")
