"""Log output: `text` (the default) or `json`, one object per line; both name the request a line belongs to.

JSON lines carry time, level, logger and message, and inside a request its id, route and
conversation id; the outcome line adds status, outcome, first-token and total times and the
upstream model (passed as `extra`). Configured secrets and anything shaped like an API key are
removed from every line. An exception is one line too, in both formats: its type, its redacted
and bounded message and the frames it passed (describe_exception), never a traceback. What a line
must never hold (message text, streamed tokens) is kept out where the lines are written: no log
call passes either.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import orjson

from services.common.request_context import current
from services.ops.redaction import one_line
from services.ops.redaction import redact_text as redact

ROOT = Path(__file__).resolve().parents[2]
MAX_EXCEPTION_MESSAGE = 300  # characters of an exception's message a line keeps, after redaction
MAX_FRAMES = 8  # the innermost frames a line names
MAX_CAUSES = 2  # the exceptions it was raised from (or while handling) a line names

# Where a text line's exception begins (a JSON line has "exc_type" and "exception" fields instead):
# what tests look for where they used to look for "Traceback".
EXCEPTION_MARK = " | exception "
JSON_EXCEPTION_MARK = '"exc_type":'

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _where(filename: str) -> str:
    """A frame's file: relative to the project when inside it, else its last two path parts."""
    path = Path(filename)
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return "/".join(path.parts[-2:])


def _message(exc: BaseException, secrets: Iterable[str]) -> str:
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ fails still gets its line
        text = "<message not readable>"
    text = one_line(redact(text, secrets))
    if len(text) > MAX_EXCEPTION_MESSAGE:
        text = text[:MAX_EXCEPTION_MESSAGE] + f"… [{len(text) - MAX_EXCEPTION_MESSAGE} more characters]"
    return text


def _cause_of(exc: BaseException | None) -> BaseException | None:
    """The exception `exc` came from, as Python's own traceback would print it."""
    if exc is None:
        return None
    return exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def describe_exception(exc_info: ExcInfo, secrets: Iterable[str] = ()) -> str:
    """An exception as one line, never a traceback: its type, its message (redacted, bounded) and
    where it was raised, the innermost MAX_FRAMES frames as `file:line in function` (innermost last),
    then the exceptions it came from, type and message only. No source lines, no local values."""
    typ, value, tb = exc_info
    frames: deque[str] = deque(maxlen=MAX_FRAMES)
    count = 0
    for frame, lineno in traceback.walk_tb(tb):
        frames.append(f"{_where(frame.f_code.co_filename)}:{lineno} in {frame.f_code.co_name}")
        count += 1
    text = f"{typ.__name__}: {_message(value, secrets)}"
    if frames:
        text += " at " + ("… > " if count > MAX_FRAMES else "") + " > ".join(frames)
    cause = _cause_of(value)
    for _ in range(MAX_CAUSES):
        if cause is None:
            break
        text += f"; from {type(cause).__name__}: {_message(cause, secrets)}"
        cause = _cause_of(cause)
    return text

# The `extra` fields a line may carry, in this order; anything else passed as extra is ignored.
FIELDS = (
    "status", "outcome", "ttft_ms", "upstream_ttft_ms", "total_ms", "upstream_model", "chunks", "finish_reason",
    "code", "method", "path", "remote_ip", "duration_ms",
)


def logged_exceptions(text: str) -> int:
    """How many lines of a log's text, in either format, carry an exception."""
    return sum(EXCEPTION_MARK in line or JSON_EXCEPTION_MARK in line for line in text.splitlines())


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
            line["exception"] = describe_exception(record.exc_info, self._secrets)  # one line, no traceback
        return redact(orjson.dumps(line, default=str).decode(), self._secrets)


class TextFormatter(logging.Formatter):
    """The classic line, with the request id in brackets inside a request."""

    def __init__(self, secrets: Iterable[str | None] = (), with_pid: bool = False) -> None:
        pid = "[%(process)d]" if with_pid else ""
        super().__init__(f"%(asctime)s %(levelname)s %(name)s{pid}%(request_tag)s: %(message)s")
        self._secrets = tuple(secret for secret in secrets if secret)

    def format(self, record: logging.LogRecord) -> str:
        # logging.Formatter.format, but an exception is one line after the message (never a
        # traceback) and a stack_info is left out.
        context = current()
        record.request_tag = f" [{context.request_id}]" if context is not None else ""
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        if record.exc_info and record.exc_info[0] is not None:
            line += EXCEPTION_MARK + describe_exception(record.exc_info, self._secrets)
        return redact(line, self._secrets)


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
