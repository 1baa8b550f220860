"""Two-line element sets: parse, verify checksums, and load from text or disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sgp4.api import WGS72, Satrec


class TleError(ValueError):
    """The text is not a valid two-line element set."""


def checksum(line: str) -> int:
    """The TLE modulo-10 checksum of the first 68 columns (digits count, '-' counts as 1)."""
    total = 0
    for char in line[:68]:
        if char.isdigit():
            total += int(char)
        elif char == "-":
            total += 1
    return total % 10


def _epoch(line1: str) -> datetime:
    year = int(line1[18:20])
    year += 2000 if year < 57 else 1900
    day = float(line1[20:32])
    return datetime(year, 1, 1, tzinfo=UTC) + timedelta(days=day - 1)


@dataclass(frozen=True)
class Elements:
    """One verified element set, where it came from, and when it was fetched."""

    name: str
    line1: str
    line2: str
    epoch: datetime
    origin: str
    fetched_at: datetime | None = None
    satrec: Satrec = field(repr=False, compare=False, default=None)  # type: ignore[assignment]

    @property
    def catalog_number(self) -> int:
        return int(self.line1[2:7])

    def age_days(self, when: datetime) -> float:
        """Days from the epoch to `when` (negative when `when` is before the epoch)."""
        return (when - self.epoch).total_seconds() / 86400.0

    def text(self) -> str:
        return f"{self.name}\n{self.line1}\n{self.line2}\n"


def parse_tle(text: str, origin: str, fetched_at: datetime | None = None) -> Elements:
    """Parse a 2- or 3-line TLE; raises TleError when malformed or a checksum is wrong."""
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) == 2:
        name, line1, line2 = "UNKNOWN", lines[0], lines[1]
    elif len(lines) == 3:
        name, line1, line2 = lines[0].strip(), lines[1], lines[2]
    else:
        raise TleError(f"expected 2 or 3 lines, got {len(lines)}")
    for number, line in ((1, line1), (2, line2)):
        if len(line) != 69 or not line.startswith(f"{number} "):
            raise TleError(f"line {number} is not a 69-column TLE line")
        if not line[68].isdigit() or checksum(line) != int(line[68]):
            raise TleError(f"line {number} checksum mismatch")
    if line1[2:7] != line2[2:7]:
        raise TleError("lines 1 and 2 name different satellites")
    try:
        epoch = _epoch(line1)
        satrec = Satrec.twoline2rv(line1, line2, WGS72)
    except ValueError as exc:
        raise TleError(f"unreadable elements: {exc}") from None
    if satrec.error:
        raise TleError(f"sgp4 rejected the elements (error {satrec.error})")
    return Elements(name, line1, line2, epoch, origin, fetched_at, satrec)


def load_tle_file(path: Path, origin: str) -> Elements:
    """Read and verify a TLE file; raises OSError or TleError."""
    return parse_tle(path.read_text(encoding="ascii"), origin)
