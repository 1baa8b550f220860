"""GET /static/...: the console's files, with the house rules for errors and logs."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import orjson
import tornado.web

from handlers.base import log_by_path
from services.common.errors import status_error

# What the pages load (templates/console*.html and console.js): scripts, the style sheet and the
# map's land polygons. Anything else under static/ (its README, a dotfile an editor or a deploy
# leaves there) is not served.
ASSET_SUFFIXES = frozenset({".js", ".css", ".json"})


def servable(url_path: str) -> bool:
    """Whether a path under /static/ names an asset the pages use: no dotfile or dot-directory, and
    an allowed extension (so no README, no .md, no source or data file dropped there by mistake)."""
    parts = PurePosixPath(url_path).parts
    if not parts or any(part.startswith(".") for part in parts):
        return False
    return PurePosixPath(parts[-1]).suffix in ASSET_SUFFIXES


class StaticHandler(tornado.web.StaticFileHandler):
    """Tornado's static files, but only the pages' assets (anything else is a 404), a path no file
    can have is a 400 (never a 500), errors are the JSON error object of the other handlers, and
    nothing is logged with its query string."""

    def parse_url_path(self, url_path: str) -> str:
        # A NUL byte made os.path raise ValueError (a 500 with a traceback); control characters and
        # backslashes never name one of our files either.
        if any(ord(char) < 0x20 or char in "\x7f\\" for char in url_path):
            raise tornado.web.HTTPError(400, "invalid static path")
        if not servable(url_path):
            raise tornado.web.HTTPError(404)
        return super().parse_url_path(url_path)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.clear_header("Content-Disposition")
        self.clear_header("Etag")
        self.clear_header("Last-Modified")
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        message = "No such file." if status_code == 404 else None
        self.finish(orjson.dumps(status_error(status_code, message).body()))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        log_by_path(self, value, (typ, value, tb))
