"""The request in flight for each conversation, so a newer one can supersede it (SUPERSEDE=conversation).

A speculative agent sends several requests for one turn, each with a longer transcript, and uses
only the last: the older ones are worth nothing once a newer one arrives. Only requests still in
flight are held, so the table is as large as the number of open requests. Per process: with
several workers, requests of one conversation reach the same worker only if the proxy routes by it.

A conversation is the caller's (the name of its key) and the id exactly as it sent it: one caller
never ends another's answer, and two ids never become one by sanitizing (`conv victim 3!` and
`convvictim3` are two conversations). Holders of one shared key (SERVER_API_KEY) are one caller.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

MAX_KEPT_ID = 256  # a longer id is kept as its SHA-256 (the table holds only requests in flight anyway)

# (the caller's key name, or None without keys; "id" and the id as sent, or "sha256" and its digest)
ConversationKey = tuple[str | None, str, str]


def conversation_key(caller: str | None, sent: str | None) -> ConversationKey | None:
    """The conversation a request belongs to (its id as the platform sent it: the Tavus header, Vapi's
    call.id), or None when it names none (never superseded)."""
    if not sent or not sent.strip():
        return None
    if len(sent) <= MAX_KEPT_ID:
        return caller, "id", sent
    return caller, "sha256", hashlib.sha256(sent.encode("utf-8", "surrogatepass")).hexdigest()


class Supersedable(Protocol):
    def supersede(self) -> None: ...


class Conversations:
    def __init__(self) -> None:
        self._latest: dict[ConversationKey, Supersedable] = {}

    def __len__(self) -> int:
        return len(self._latest)

    def claim(self, conversation_id: ConversationKey, request: Supersedable) -> None:
        """`request` is now the conversation's latest: the older one in flight, if any, is superseded."""
        older = self._latest.get(conversation_id)
        self._latest[conversation_id] = request
        if older is not None and older is not request:
            older.supersede()

    def release(self, conversation_id: ConversationKey, request: Supersedable) -> None:
        """`request` ended: forget it, unless a newer one has taken its place."""
        if self._latest.get(conversation_id) is request:
            del self._latest[conversation_id]
