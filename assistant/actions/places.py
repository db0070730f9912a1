"""Where chargers are: site coordinates and Swedish place names, matched case- and
diacritics-insensitively ("Goteborg", "GÖTEBORG" and "göteborg" are one place).

The coordinates come from ``data/site_locations.json`` because the site table has no
columns for them yet; they belong there (a migration adding latitude and longitude).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

LOCATIONS = Path(__file__).resolve().parents[2] / "data" / "site_locations.json"
EARTH_RADIUS_KM = 6371.0


def fold(text: str) -> str:
    """Lower case without diacritics, words separated by single spaces."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(re.findall(r"[a-z0-9]+", plain))


@dataclass(frozen=True)
class Gazetteer:
    sites: dict[str, tuple[float, float]]
    places: dict[str, tuple[str, tuple[float, float]]]  # folded name -> (name, (lat, lon))

    def find_place(self, text: str, extra: Iterable[tuple[str, str]] = ()
                   ) -> tuple[str, tuple[float, float]] | None:
        """The longest place name in ``text``, or one of ``extra`` (name, site id) pairs
        such as site names; its name and coordinates."""
        words = f" {fold(text)} "
        candidates = dict(self.places)
        for name, site_id in extra:
            if site_id in self.sites and fold(name):
                candidates.setdefault(fold(name), (name, self.sites[site_id]))
        found = [key for key in candidates if f" {key} " in words]
        if not found:
            return None
        return candidates[max(found, key=len)]


@lru_cache(maxsize=1)
def gazetteer(path: Path = LOCATIONS) -> Gazetteer:
    data = json.loads(path.read_text(encoding="utf-8"))
    sites = {site_id: (float(v["lat"]), float(v["lon"])) for site_id, v in data["sites"].items()}
    places = {fold(name): (name, (float(lat), float(lon)))
              for name, (lat, lon) in data["places"].items()}
    return Gazetteer(sites, places)


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (math.sin((lat2 - lat1) / 2) ** 2
         + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))
