"""Console events: one table of types (kinds), sanitizing, the replay buffer, fan-out, and the hubs."""

from services.console.fanout import Fanout, SubscriberPolicy, Subscription, coalesce, encode
from services.console.hub import Hub, MemoryHub
from services.console.kinds import EVENT_TYPES, OUTCOMES

__all__ = [
    "EVENT_TYPES", "OUTCOMES", "Fanout", "Hub", "MemoryHub", "SubscriberPolicy",
    "Subscription", "coalesce", "encode",
]
