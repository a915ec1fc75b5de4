"""How a node's log lines look: human-readable by default, one JSON object per line on request.

A notable event (an election, a membership change, a snapshot, a failure
detector's verdict) is logged with ``extra={"event": KIND, "fields": {...}}``
(see :mod:`quorumkv.server.events`): the human format appends the fields as
``key=value``, the JSON format carries ``event`` and the fields as members, so
a log pipeline can select events without parsing messages. Secrets never reach
a log call in the first place: the cluster token is kept out of every message
and every field.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

FORMATS = ("human", "json")
LEVELS = ("debug", "info", "warning", "error")

_HUMAN = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _fields_of(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


class HumanFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(_HUMAN)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields_of(record)
        if fields:
            line += " " + " ".join(f"{k}={_compact(v)}" for k, v in fields.items())
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (RFC 3339, UTC), ``level``, ``logger``, ``msg``,
    ``event`` when the line is a notable event, its fields, and ``exc`` for a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        event = getattr(record, "event", None)
        if isinstance(event, str):
            out["event"] = event
        for key, value in _fields_of(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def _compact(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


def configure_logging(level: str = "info", fmt: str = "human") -> None:
    """Send the process's logs to stderr in ``fmt`` at ``level`` (replacing any set-up)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # aiohttp logs every request at INFO: far too chatty for a node's log.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
