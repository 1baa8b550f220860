"""The request in flight for each conversation, so a newer one can supersede it (SUPERSEDE=conversation).

A speculative agent sends several requests for one turn, each with a longer transcript, and uses
only the last: the older ones are worth nothing once a newer one arrives. Only requests still in
flight are held, so the table is as large as the number of open requests. Per process: with
several workers, requests of one conversation reach the same worker only if the proxy routes by it.
"""

from __future__ import annotations

from typing import Protocol


class Supersedable(Protocol):
    def supersede(self) -> None: ...


class Conversations:
    def __init__(self) -> None:
        self._latest: dict[str, Supersedable] = {}

    def __len__(self) -> int:
        return len(self._latest)

    def claim(self, conversation_id: str, request: Supersedable) -> None:
        """`request` is now the conversation's latest: the older one in flight, if any, is superseded."""
        older = self._latest.get(conversation_id)
        self._latest[conversation_id] = request
        if older is not None and older is not request:
            older.supersede()

    def release(self, conversation_id: str, request: Supersedable) -> None:
        """`request` ended: forget it, unless a newer one has taken its place."""
        if self._latest.get(conversation_id) is request:
            del self._latest[conversation_id]
