"""The one table of console event types: what the chat path publishes and what the page reads.

Each type has a role that says what the console does with it; the page gets this table (rendered
into its template as JSON) and acts on roles, so a new outcome or event is one line here.
Every event carries "type", "id" (the request id; "-" for station pushes) and "t" (epoch seconds).
"""

from __future__ import annotations

from types import MappingProxyType

# role: what an event of this type is to the console and the replay buffer.
#   request  opens a request's record (messages, parameters, upstream, worker)
#   iss      the ISS context block added to that request
#   text     a piece of the streamed answer
#   outcome  how the request ended (its record's status is the type's name)
#   station  the station's position, pushed to every console, not part of any request
#   feed     the state of this worker's link to the cluster feed (Redis): connected or not
#   tool     one of the layer's own tools run for the model: name, arguments, result, time
EVENT_TYPES: MappingProxyType[str, str] = MappingProxyType({
    "request": "request",
    "iss": "iss",
    "tokens": "text",
    "iss_tool": "tool",
    "done": "outcome",
    "cancelled": "outcome",
    "superseded": "outcome",
    "error": "outcome",
    "lost": "outcome",  # the worker serving it died; closed by the worker that took its place
    "iss_state": "station",
    "cluster": "feed",
})

ROLES = frozenset(("request", "iss", "text", "outcome", "station", "feed", "tool"))
# Roles that are no request's: the latest of each greets a socket that connects.
PUSHES = frozenset(("station", "feed"))
OUTCOMES: tuple[str, ...] = tuple(name for name, role in EVENT_TYPES.items() if role == "outcome")


def role_of(kind: object) -> str | None:
    """The role of an event type, or None for a type the console does not know."""
    return EVENT_TYPES.get(kind) if isinstance(kind, str) else None
