"""Upstream profiles that look like real providers, for time to first content and token pacing.

Each profile is a pace the fake upstream keeps for one request (its `x_fake` options): a role chunk
first, then content tokens some milliseconds apart, each chunk stamped with the time the fake
wrote it (`x_sent`, time.monotonic(), the clock the load generator reads), so the load generator
can tell how much the path between them changed each gap.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.loadgen import chat_body


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    tokens: int
    gap: float
    first_token_delay: float = 0.05
    pause_at: int | None = None  # the chunk index before which the upstream pauses
    pause: float = 0.0

    def body(self) -> bytes:
        extra: dict[str, object] = {"stamp": True}
        if self.pause_at is not None:
            extra.update(pause_at=self.pause_at, pause=self.pause)
        return chat_body(self.tokens, self.gap, self.first_token_delay, **extra)

    @property
    def seconds(self) -> float:
        """How long one answer takes at the upstream."""
        return self.first_token_delay + (self.tokens + 1) * self.gap + self.pause


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("openai", "role chunk at 50 ms, then 20 tokens 10 ms apart (OpenAI, vLLM)", tokens=20, gap=0.010),
        Profile("slow", "role chunk at 50 ms, then 12 tokens 30 ms apart (a slow model)", tokens=12, gap=0.030),
        Profile("thinking", "as openai, with a 0.5 s pause after the 8th token (a model that thinks)",
                tokens=20, gap=0.010, pause_at=9, pause=0.5),
    )
}

# (profile, connections) pairs a full run measures: every profile on reused connections (as agents
# hold them), and the OpenAI-like one on a new connection per request as well.
RUNS: tuple[tuple[str, str], ...] = (("openai", "reused"), ("openai", "new"), ("slow", "reused"),
                                     ("thinking", "reused"))
