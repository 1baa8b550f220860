"""The tracker's seam to the rest of a cluster: whether this worker polls the ISS sources, and
what it does with what it fetched. One process (no Redis): it always polls and keeps it to itself."""

from __future__ import annotations

from typing import Protocol

from services.iss.sources import Fix
from services.iss.tle import Elements


class IssFeed(Protocol):
    def may_poll(self) -> bool:
        """Whether this worker polls the live sources now (else another one sends its fixes here)."""
        ...

    def may_fetch_elements(self) -> bool:
        """Whether this worker may ask CelesTrak now (asked only when its own cache says it is due)."""
        ...

    def fetched_fix(self, fix: Fix) -> None:
        """A fix this worker fetched (the tracker has already taken it)."""
        ...

    def fetched_elements(self, elements: Elements) -> None:
        """An element set this worker fetched (the tracker has already taken it)."""
        ...


class SelfPolling:
    """One process on its own: it polls at its own pace and tells no one."""

    def may_poll(self) -> bool:
        return True

    def may_fetch_elements(self) -> bool:
        return True

    def fetched_fix(self, fix: Fix) -> None:
        return None

    def fetched_elements(self, elements: Elements) -> None:
        return None
