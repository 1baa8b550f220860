"""GET /static/...: the console's files, with the house rules for errors and logs."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import tornado.web

from handlers.base import log_by_path


class StaticHandler(tornado.web.StaticFileHandler):
    """Tornado's static files, but a path no file can have is a 400 (never a 500), errors are
    plain text rather than HTML, and nothing is logged with its query string."""

    def parse_url_path(self, url_path: str) -> str:
        # A NUL byte made os.path raise ValueError (a 500 with a traceback); control characters and
        # backslashes never name one of our files either.
        if any(ord(char) < 0x20 or char in "\x7f\\" for char in url_path):
            raise tornado.web.HTTPError(400, "invalid static path")
        return super().parse_url_path(url_path)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.clear_header("Content-Disposition")
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        phrase = HTTPStatus(status_code).phrase if status_code in HTTPStatus._value2member_map_ else "Error"
        self.finish(f"{status_code} {phrase}\n")

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        log_by_path(self, value, (typ, value, tb))
