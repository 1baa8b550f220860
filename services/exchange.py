"""One chat request's record: its timings and outcome, published step by step to the events hub."""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

log = logging.getLogger("iss_llm.chat")


class Publisher(Protocol):
    def publish(self, event: dict[str, Any]) -> None: ...


class Exchange:
    """Records one request from arrival to its end (done, cancelled or error) and publishes each step.

    Event types are those of the one table in services/events/kinds.py, each event with "type",
    "id" and "t" (epoch seconds). Nothing secret is ever put on an event: no headers, no keys.
    """

    def __init__(
        self,
        hub: Publisher,
        *,
        request_id: str,
        conversation_id: str | None,
        remote_ip: str | None,
        path: str,
    ) -> None:
        self.hub = hub
        self.id = request_id
        self.conversation_id = conversation_id
        self.remote_ip = remote_ip
        self.path = path
        self.started = time.monotonic()
        self.first_token_at: float | None = None
        self.chunks = 0
        self.outcome: str | None = None
        self.tool_calls: dict[int, dict[str, str]] = {}

    def _emit(self, kind: str, **fields: Any) -> None:
        self.hub.publish({"type": kind, "id": self.id, "t": time.time(), **fields})

    def _elapsed_ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 2)

    @property
    def ttft_ms(self) -> float | None:
        if self.first_token_at is None:
            return None
        return round((self.first_token_at - self.started) * 1000, 2)

    def request(
        self,
        *,
        model: str,
        requested_model: str | None,
        stream: bool,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        upstream: dict[str, Any],
    ) -> None:
        self._emit(
            "request",
            conversation_id=self.conversation_id,
            remote_ip=self.remote_ip,
            path=self.path,
            model=model,
            requested_model=requested_model,
            stream=stream,
            messages=messages,
            params=params,
            upstream=upstream,
        )

    def iss(self, block: str, state: dict[str, Any] | None) -> None:
        self._emit("iss", block=block, state=state)

    def token(self, text: str) -> None:
        """One content delta relayed to the caller (an empty string still marks the first token)."""
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.chunks += 1
        if text:
            self._emit("tokens", text=text)

    def tool_call(self, delta: Any) -> None:
        """Fold one streamed tool-call delta (or a whole call) into the calls shown when done."""
        if not isinstance(delta, dict):
            return
        call = self.tool_calls.setdefault(delta.get("index", len(self.tool_calls)), {"name": "", "arguments": ""})
        function = delta.get("function") if isinstance(delta.get("function"), dict) else {}
        if isinstance(function.get("name"), str):
            call["name"] += function["name"]
        if isinstance(function.get("arguments"), str):
            call["arguments"] += function["arguments"]

    def done(self, finish_reason: str | None, usage: dict[str, Any] | None) -> None:
        self.outcome = "done"
        total_ms = self._elapsed_ms()
        generating_s = (
            (time.monotonic() - self.first_token_at) if self.first_token_at is not None else 0.0
        )
        completion_tokens = (usage or {}).get("completion_tokens") or self.chunks
        tps = round(completion_tokens / generating_s, 1) if generating_s > 0 else None
        self._emit(
            "done",
            finish_reason=finish_reason,
            usage=usage,
            ttft_ms=self.ttft_ms,
            total_ms=total_ms,
            chunks=self.chunks,
            tokens_per_second=tps,
            tool_calls=[self.tool_calls[index] for index in sorted(self.tool_calls)] or None,
        )
        log.info(
            "request %s conversation=%s done finish=%s ttft_ms=%s total_ms=%s chunks=%d",
            self.id, self.conversation_id, finish_reason, self.ttft_ms, total_ms, self.chunks,
        )

    def cancelled(self) -> None:
        if self.outcome is not None:
            return
        self.outcome = "cancelled"
        at_ms = self._elapsed_ms()
        self._emit("cancelled", at_ms=at_ms, chunks=self.chunks)
        log.info(
            "request %s conversation=%s cancelled by caller at_ms=%s chunks=%d",
            self.id, self.conversation_id, at_ms, self.chunks,
        )

    def failed(
        self, *, status: int, message: str, where: str, code: str | None = None, outcome: str = "error"
    ) -> None:
        self.outcome = outcome
        at_ms = self._elapsed_ms()
        self._emit("error", status=status, message=message, where=where, code=code, at_ms=at_ms)
        log.warning(
            "request %s conversation=%s error where=%s status=%d code=%s: %s",
            self.id, self.conversation_id, where, status, code, message,
        )
