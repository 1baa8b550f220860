"""Log output: `text` (the default) or `json`, one object per line; both name the request a line belongs to.

JSON lines carry time, level, logger and message, and inside a request its id, route and
conversation id; the outcome line adds status, outcome, first-token and total times and the
upstream model (passed as `extra`). Configured secrets and anything shaped like an API key are
removed from every line. What a line must never hold (message text, streamed tokens) is kept out
where the lines are written: no log call passes either.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from services.redaction import redact_text as redact
from services.request_context import current

# The `extra` fields a line may carry, in this order; anything else passed as extra is ignored.
FIELDS = (
    "status", "outcome", "ttft_ms", "upstream_ttft_ms", "total_ms", "upstream_model", "chunks", "finish_reason",
    "code", "method", "path", "remote_ip", "duration_ms",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, secrets: Iterable[str | None] = (), with_pid: bool = False) -> None:
        super().__init__()
        kept = [secret for secret in secrets if secret]
        # Redacted once, in the finished line: each secret as written and as JSON escapes it.
        self._secrets = tuple({*kept, *(orjson.dumps(secret).decode()[1:-1] for secret in kept)})
        self._with_pid = with_pid

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._with_pid:
            line["pid"] = record.process
        context = current()
        if context is not None:
            line["request_id"] = context.request_id
            line["route"] = context.route
            if context.conversation_id is not None:
                line["conversation_id"] = context.conversation_id
        fields = record.__dict__
        for name in FIELDS:
            value = fields.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            line["exc_type"] = record.exc_info[0].__name__
            line["traceback"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(line, default=str).decode(), self._secrets)


class TextFormatter(logging.Formatter):
    """The classic line, with the request id in brackets inside a request."""

    def __init__(self, secrets: Iterable[str | None] = (), with_pid: bool = False) -> None:
        pid = "[%(process)d]" if with_pid else ""
        super().__init__(f"%(asctime)s %(levelname)s %(name)s{pid}%(request_tag)s: %(message)s")
        self._secrets = tuple(secret for secret in secrets if secret)

    def format(self, record: logging.LogRecord) -> str:
        context = current()
        record.request_tag = f" [{context.request_id}]" if context is not None else ""
        return redact(super().format(record), self._secrets)


def configure(
    log_format: str, level: str, secrets: Iterable[str | None] = (), stream: TextIO | None = None,
    with_pid: bool = False,
) -> logging.Handler:
    """The root logger's one handler, in the chosen format (with the process id, for workers); returns it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    handler.setFormatter(formatter(secrets, with_pid=with_pid))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    return handler
