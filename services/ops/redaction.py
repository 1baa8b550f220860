"""Keeping secrets out of what leaves the server: error messages (text) and recorded mappings (fields)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "[redacted]"

# A key-shaped word inside free text (an upstream's error message, say).
_SECRET_IN_TEXT = re.compile(r"\b(sk|key|tok)[-_][A-Za-z0-9_\-]{8,}")
# A mapping key whose value is a credential.
SECRET_KEY = re.compile(r"(api[_-]?key|authorization|secret|password|token$|^key$)", re.IGNORECASE)


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """The text with configured secrets and anything shaped like an API key replaced by ***."""
    # Longest first: a secret that is part of another never leaves the longer one's rest in the text.
    for secret in sorted({secret for secret in secrets if secret and len(secret) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return _SECRET_IN_TEXT.sub("***", text)


def redact_fields(value: Any) -> Any:
    """A copy of a mapping (params, upstream) with credential-named fields and URL passwords removed."""
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and SECRET_KEY.search(k) and v else redact_fields(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_fields(v) for v in value]
    if isinstance(value, str) and "@" in value and "://" in value:
        return _strip_userinfo(value)
    return value


def _strip_userinfo(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# --- log lines: one line each, whatever outside data they carry (issue 9) --------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str) -> str:
    """The text with every control character (newlines included) written as an escape."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256
                                              else f"\\u{ord(m.group()):04x}"), text)


class _OneLineRecords:
    """A log record factory that keeps each record's message to one line, around the one before it."""

    def __init__(self, previous: Callable[..., logging.LogRecord]) -> None:
        self.previous = previous

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format: left for the handler to report as usual
            return record
        safe = one_line(message)
        if safe is not message or record.args:
            record.msg, record.args = safe, None
        return record


def install_log_sanitizer() -> None:
    """Every log record's message (format string and arguments, from anywhere) kept to one line, so an
    upstream's error message or a caller's header cannot forge a log line. Exceptions are made one
    line by the formatters (services.ops.logs.describe_exception).
    Installed once at start, as the record factory: it holds whatever handlers and formats are used."""
    previous = logging.getLogRecordFactory()
    if not isinstance(previous, _OneLineRecords):
        logging.setLogRecordFactory(_OneLineRecords(previous))
