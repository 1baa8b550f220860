"""Orbital elements: two-line sets (checksums verified) and OMM records (CelesTrak's JSON), for SGP4."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sgp4 import omm as sgp4_omm
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
    satrec: Satrec = field(repr=False, compare=False)
    fetched_at: datetime | None = None
    # The OMM fields when the elements came as OMM (then line1 and line2 are empty).
    omm: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def catalog_number(self) -> int:
        if self.omm is not None:
            return int(self.omm["NORAD_CAT_ID"])
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
    return Elements(name, line1, line2, epoch, origin, satrec, fetched_at)


def load_tle_file(path: Path, origin: str) -> Elements:
    """Read and verify a TLE file; raises OSError or TleError."""
    return parse_tle(path.read_text(encoding="ascii"), origin)


_OMM_NUMBERS = (
    "MEAN_MOTION", "ECCENTRICITY", "INCLINATION", "RA_OF_ASC_NODE", "ARG_OF_PERICENTER", "MEAN_ANOMALY",
    "BSTAR", "MEAN_MOTION_DOT", "MEAN_MOTION_DDOT",
)
_OMM_INTEGERS = ("NORAD_CAT_ID", "ELEMENT_SET_NO", "REV_AT_EPOCH", "EPHEMERIS_TYPE")


def parse_omm(fields: Any, origin: str, fetched_at: datetime | None = None) -> Elements:
    """Elements from one OMM record (CelesTrak's JSON keys); raises TleError when it is unusable."""
    if not isinstance(fields, dict):
        raise TleError("OMM record is not an object")
    record: dict[str, Any] = {}
    try:
        for key in _OMM_NUMBERS:
            value = fields[key]
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise TleError(f"OMM {key} is not a number")
            number = float(value)
            if not math.isfinite(number):
                raise TleError(f"OMM {key} is not finite")
            record[key] = number
        for key in _OMM_INTEGERS:
            record[key] = int(fields.get(key, 0) if key != "NORAD_CAT_ID" else fields[key])
        epoch_text = str(fields["EPOCH"])[:40]
        record["EPOCH"] = epoch_text if "." in epoch_text else epoch_text + ".000000"
        record["OBJECT_NAME"] = str(fields.get("OBJECT_NAME", "UNKNOWN"))[:40]
        record["OBJECT_ID"] = str(fields.get("OBJECT_ID", "1998-067A"))[:20]
        record["CLASSIFICATION_TYPE"] = str(fields.get("CLASSIFICATION_TYPE", "U"))[:1] or "U"
        satrec = Satrec()
        sgp4_omm.initialize(satrec, record)
        epoch = datetime.strptime(record["EPOCH"], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
    except TleError:
        raise
    except (KeyError, ValueError, TypeError, OverflowError) as exc:
        raise TleError(f"unreadable OMM record ({type(exc).__name__}: {str(exc)[:60]})") from None
    if satrec.error or not 0 < record["MEAN_MOTION"] < 20 or not 0 <= record["ECCENTRICITY"] < 1:
        raise TleError("sgp4 rejected the OMM elements")
    return Elements(record["OBJECT_NAME"], "", "", epoch, origin, satrec, fetched_at, record)


def parse_omm_json(text: str, origin: str, fetched_at: datetime | None = None) -> Elements:
    """Elements from CelesTrak's GP query in JSON: a list holding one OMM record."""
    try:
        data = json.loads(text)
    except ValueError:
        raise TleError("OMM body is not JSON") from None
    if isinstance(data, list):
        if len(data) != 1:
            raise TleError(f"expected one OMM record, got {len(data)}")
        data = data[0]
    return parse_omm(data, origin, fetched_at)
