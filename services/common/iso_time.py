"""Times as every answer writes them: ISO 8601, UTC as "Z"."""

from __future__ import annotations

from datetime import datetime
from typing import overload


@overload
def iso_z(when: datetime) -> str: ...
@overload
def iso_z(when: None) -> None: ...
def iso_z(when: datetime | None) -> str | None:
    """`when` in ISO 8601 with "Z" for UTC (another offset stays as written); None stays None."""
    return when.isoformat().replace("+00:00", "Z") if when is not None else None
