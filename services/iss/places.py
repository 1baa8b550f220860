"""Places on the ground to watch the station from: the shipped cities table, or coordinates.

Offline: names come from data/geography/cities.tsv (notable GeoNames cities), time zones from the
IANA database's zone.tab (the system's, or the `tzdata` package's): the zone of the nearest
zone city in the same country.
"""

from __future__ import annotations

import difflib
import importlib.resources
import math
import re
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt

from services.iss.describe import coordinates
from services.iss.geography import read_city_rows

MAX_QUERY = 120
_COORDINATES = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*[,; ]\s*(-?\d+(?:\.\d+)?)\s*$")
_SYSTEM_ZONEINFO = Path("/usr/share/zoneinfo")


class PlaceError(ValueError):
    """The place is unknown or its coordinates are out of range; the message is safe to show."""

    def __init__(self, message: str, suggestions: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.suggestions = suggestions


@dataclass(frozen=True)
class Observer:
    """Someone on the ground at (latitude, longitude), with a name to say and a time zone."""

    name: str
    latitude: float
    longitude: float
    timezone: str | None = None

    def zone(self) -> ZoneInfo | None:
        if self.timezone is None:
            return None
        try:
            return ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            return None


def _fold(text: str) -> str:
    """Lower case, accents and punctuation dropped: 'São Paulo' and 'sao paulo' compare equal."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(char for char in decomposed if not unicodedata.combining(char))
    return re.sub(r"[^a-z0-9]+", " ", plain.lower()).strip()


class Places:
    """Looks places up by name ('Paris', 'Paris, France', 'London, Canada') or 'lat, lon'."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, list[tuple[str, str, float, float, int]]] | None = None
        self._countries: dict[str, str] = {}
        self._zones: list[tuple[tuple[str, ...], float, float, str]] | None = None
        self._zone_vectors: npt.NDArray[np.float64] | None = None  # each zone city as a unit vector
        self._zones_of: dict[str, npt.NDArray[np.intp]] = {}  # a country code's zones (indexes)

    def _cities(self) -> dict[str, list[tuple[str, str, float, float, int]]]:
        with self._lock:
            if self._by_name is None:
                by_name: dict[str, list[tuple[str, str, float, float, int]]] = {}
                for row in read_city_rows():
                    by_name.setdefault(_fold(row[0]), []).append(row)
                self._by_name = by_name
            return self._by_name

    def find(self, query: str) -> Observer:
        """The place a caller named; raises PlaceError when unknown (with close names to suggest)."""
        query = (query or "").strip()
        if not query:
            raise PlaceError("Name a place, e.g. 'Paris' or 'Paris, France', or give 'latitude, longitude'.")
        if len(query) > MAX_QUERY:
            raise PlaceError(f"A place name is at most {MAX_QUERY} characters.")
        match = _COORDINATES.match(query)
        if match:
            return self.at(float(match[1]), float(match[2]))
        name, _, country = query.partition(",")
        key, country_key = _fold(name), _fold(country)
        cities = self._cities()
        rows = cities.get(key, [])
        if not rows and len(key) >= 3:
            # 'New York' for 'New York City': the most populous name that starts with the words given.
            rows = sorted((row for name, found in cities.items() if name.startswith(key + " ") for row in found),
                          key=lambda row: -row[4])
        if country_key:
            rows = [row for row in rows if _fold(row[1]) == country_key or _fold(row[1]).startswith(country_key)]
        if not rows:
            close = difflib.get_close_matches(key, list(cities), n=3, cutoff=0.75)
            suggestions = tuple(f"{cities[c][0][0]}, {cities[c][0][1]}" for c in close)
            hint = f" Did you mean {' or '.join(suggestions)}?" if suggestions else ""
            raise PlaceError(f"Unknown place {query!r}: it is not in the offline cities table.{hint}", suggestions)
        # The table is ordered by population: the best-known city of that name comes first.
        city, country_name, lat, lon, _population = rows[0]
        return Observer(f"{city}, {country_name}", lat, lon, self.timezone_for(lat, lon, country_name))

    def at(self, latitude: float, longitude: float, name: str | None = None) -> Observer:
        """An observer at coordinates; raises PlaceError when they are out of range."""
        if not (math.isfinite(latitude) and -90.0 <= latitude <= 90.0):
            raise PlaceError("Latitude must be a number from -90 to 90.")
        if not (math.isfinite(longitude) and -180.0 <= longitude <= 180.0):
            raise PlaceError("Longitude must be a number from -180 to 180.")
        zone = self.timezone_for(latitude, longitude, None)
        return Observer(name or coordinates(latitude, longitude), latitude, longitude, zone)

    # ---- time zones ----

    def timezone_for(self, latitude: float, longitude: float, country: str | None) -> str | None:
        """The IANA zone of the nearest zone.tab city, within the same country when it is known
        (all ~400 distances at once: a few microseconds, not the milliseconds of a Python loop)."""
        zones = self._zone_table()
        if not zones or self._zone_vectors is None:
            return None
        code = self._countries.get(_fold(country)) if country else None
        candidates = self._zones_of.get(code) if code else None
        if candidates is None:
            return zones[int(np.argmax(self._zone_vectors @ _unit_vector(latitude, longitude)))][3]
        nearness = self._zone_vectors[candidates] @ _unit_vector(latitude, longitude)
        return zones[int(candidates[int(np.argmax(nearness))])][3]

    def _zone_table(self) -> list[tuple[tuple[str, ...], float, float, str]]:
        with self._lock:
            if self._zones is None:
                self._zones = []
                zone_text, iso_text = _read_tab("zone.tab"), _read_tab("iso3166.tab")
                for line in iso_text.splitlines():
                    if line and not line.startswith("#"):
                        code, _, name = line.partition("\t")
                        self._countries[_fold(name)] = code
                for line in zone_text.splitlines():
                    if not line or line.startswith("#"):
                        continue
                    fields = line.split("\t")
                    if len(fields) < 3:
                        continue
                    parsed = _iso6709(fields[1])
                    if parsed is not None:
                        self._zones.append((tuple(fields[0].split(",")), parsed[0], parsed[1], fields[2]))
                if self._zones:
                    self._zone_vectors = np.array([_unit_vector(lat, lon) for _, lat, lon, _ in self._zones])
                    of: dict[str, list[int]] = {}
                    for index, (codes, _, _, _) in enumerate(self._zones):
                        for country_code in codes:
                            of.setdefault(country_code, []).append(index)
                    self._zones_of = {country_code: np.array(found) for country_code, found in of.items()}
            return self._zones


def _read_tab(name: str) -> str:
    path = _SYSTEM_ZONEINFO / name
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        pass
    try:
        return importlib.resources.files("tzdata").joinpath("zoneinfo", name).read_text(encoding="utf-8")
    except (ModuleNotFoundError, OSError):
        return ""


def _iso6709(text: str) -> tuple[float, float] | None:
    """'+4852+00220' or '+404251-0740023' to degrees."""
    match = re.fullmatch(r"([+-])(\d{2})(\d{2})(\d{2})?([+-])(\d{3})(\d{2})(\d{2})?", text)
    if not match:
        return None
    lat = int(match[2]) + int(match[3]) / 60 + int(match[4] or 0) / 3600
    lon = int(match[6]) + int(match[7]) / 60 + int(match[8] or 0) / 3600
    return (lat if match[1] == "+" else -lat), (lon if match[5] == "+" else -lon)


def _unit_vector(latitude: float, longitude: float) -> npt.NDArray[np.float64]:
    """A point on the sphere as a unit vector: the nearest point has the largest dot product."""
    lat, lon = math.radians(latitude), math.radians(longitude)
    return np.array([math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)])
