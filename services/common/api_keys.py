"""The server's bearer keys, each with a name: which caller a token belongs to, checked in constant time.

Only names leave this object (for the console, the logs, the conversations of SUPERSEDE): a key
never does. Each token is compared with every key, whatever matched first, as SHA-256 digests, so
neither the time taken nor the keys' lengths tell a guesser anything.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class ApiKeys:
    """Named bearer keys; empty means the routes they guard are open."""

    def __init__(self, named: Iterable[tuple[str, str | None]] = ()) -> None:
        self._keys = tuple((name, _digest(key)) for name, key in named if key)

    def __bool__(self) -> bool:
        return bool(self._keys)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._keys)

    def name_of(self, token: str) -> str | None:
        """The name of the key `token` is, or None; every key is compared, in constant time each."""
        given = _digest(token)
        found: str | None = None
        for name, digest in self._keys:
            if hmac.compare_digest(given, digest) and found is None:
                found = name
        return found
