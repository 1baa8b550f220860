"""What lies below a point: the country, or the sea or ocean, and the nearest notable city.

Fully offline: data/geography/ holds a 0.1° raster of Natural Earth countries and named waters
and a table of notable GeoNames cities, built by data/build_geography.py. Loading takes tens of
milliseconds and about 15 MB; a lookup is a raster index plus a scan of ~1,700 city vectors.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import zlib
from array import array
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "geography"
_DEG = math.pi / 180.0


@dataclass(frozen=True)
class Place:
    """What is below a point, and the nearest notable city."""

    over: str | None
    water: bool | None = None
    city: str | None = None
    city_latitude: float | None = None
    city_longitude: float | None = None


class GeographyError(RuntimeError):
    """The bundled geography data is missing or malformed."""


class Geography:
    """Offline country / ocean / nearest-city lookups; load() once (in a thread), then lookup()."""

    def __init__(self, data_dir: Path = DATA_DIR) -> None:
        self.data_dir = data_dir
        self.loaded = False
        self._lock = threading.Lock()
        self._raster: array = array("H")
        self._width = self._height = 0
        self._resolution = 1.0
        self._names: list[tuple[str, bool]] = []
        self._cities: list[tuple[str, float, float]] = []
        self._vectors: list[tuple[float, float, float]] = []

    def load(self) -> None:
        """Read the raster and the city table; raises GeographyError when they are unusable."""
        with self._lock:
            if self.loaded:
                return
            try:
                meta = json.loads((self.data_dir / "areas.json").read_text(encoding="utf-8"))
                raster = array("H")
                raster.frombytes(zlib.decompress((self.data_dir / "raster.bin.zz").read_bytes()))
                if sys.byteorder == "big":
                    raster.byteswap()
                width, height = int(meta["width"]), int(meta["height"])
                if len(raster) != width * height:
                    raise GeographyError("raster size does not match its header")
                names = [(entry["name"], bool(entry["water"])) for entry in meta["names"]]
                cities, vectors = self._read_cities(self.data_dir / "cities.tsv")
            except (OSError, ValueError, KeyError, TypeError, zlib.error) as exc:
                raise GeographyError(f"geography data unusable: {type(exc).__name__}") from None
            self._raster, self._width, self._height = raster, width, height
            self._resolution = float(meta["resolution_deg"])
            self._names, self._cities, self._vectors = names, cities, vectors
            self.loaded = True

    @staticmethod
    def _read_cities(path: Path) -> tuple[list[tuple[str, float, float]], list[tuple[float, float, float]]]:
        cities, vectors = [], []
        for name, country, lat, lon, _population in read_city_rows(path):
            cities.append((f"{name}, {country}", lat, lon))
            vectors.append(_unit(lat, lon))
        return cities, vectors

    def area(self, latitude: float, longitude: float) -> tuple[str, bool] | None:
        """(name, is_water) of the raster cell containing the point."""
        if not self.loaded:
            return None
        row = min(self._height - 1, max(0, int((latitude + 90.0) / self._resolution)))
        col = int(((longitude + 180.0) % 360.0) / self._resolution) % self._width
        name, water = self._names[self._raster[row * self._width + col]]
        return (name, water) if name else None

    def nearest_city(self, latitude: float, longitude: float) -> tuple[str, float, float] | None:
        """The notable city with the smallest great-circle distance to the point."""
        if not self.loaded or not self._vectors:
            return None
        x, y, z = _unit(latitude, longitude)
        best, best_dot = 0, -2.0
        for index, (cx, cy, cz) in enumerate(self._vectors):
            dot = x * cx + y * cy + z * cz
            if dot > best_dot:
                best, best_dot = index, dot
        return self._cities[best]

    def lookup(self, latitude: float, longitude: float) -> Place | None:
        """The place below (latitude, longitude), or None before load()."""
        if not self.loaded:
            return None
        area = self.area(latitude, longitude)
        city = self.nearest_city(latitude, longitude)
        return Place(
            over=area[0] if area else None,
            water=area[1] if area else None,
            city=city[0] if city else None,
            city_latitude=city[1] if city else None,
            city_longitude=city[2] if city else None,
        )


def read_city_rows(path: Path = DATA_DIR / "cities.tsv") -> list[tuple[str, str, float, float, int]]:
    """The shipped cities table: (name, country, latitude, longitude, population), most populous first."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            name, country, lat_text, lon_text, population = line.rstrip("\n").split("\t")
            rows.append((name, country, float(lat_text), float(lon_text), int(population or 0)))
    return rows


def _unit(latitude: float, longitude: float) -> tuple[float, float, float]:
    p, lam = latitude * _DEG, longitude * _DEG
    return math.cos(p) * math.cos(lam), math.cos(p) * math.sin(lam), math.sin(p)
