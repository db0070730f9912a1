"""Words the actions put into response templates: connector states and cost dimensions."""

from __future__ import annotations

CONNECTOR_STATUS = {
    "sv": {"Available": "ledigt", "Preparing": "kabeln i, väntar på start",
           "Charging": "laddar", "SuspendedEV": "pausat av bilen",
           "SuspendedEVSE": "pausat av laddstationen", "Finishing": "avslutar",
           "Reserved": "reserverat", "Unavailable": "ur drift", "Faulted": "fel"},
    "en": {"Available": "free", "Preparing": "plugged in, waiting to start",
           "Charging": "charging", "SuspendedEV": "paused by the car",
           "SuspendedEVSE": "paused by the station", "Finishing": "finishing",
           "Reserved": "reserved", "Unavailable": "out of service", "Faulted": "faulted"},
}

CONNECTOR = {"sv": "uttag", "en": "connector"}

# OCPI cost dimensions, as a receipt names them.
DIMENSION = {
    "sv": {"FLAT": "Startavgift", "ENERGY": "Energi", "TIME": "Laddtid",
           "PARKING_TIME": "Parkering", "ADJUSTMENT": "Minimipris", "CREDIT": "Kreditering"},
    "en": {"FLAT": "Session fee", "ENERGY": "Energy", "TIME": "Charging time",
           "PARKING_TIME": "Parking", "ADJUSTMENT": "Minimum price", "CREDIT": "Credit"},
}

UNIT = {"sv": {"kWh": "kWh", "h": "h", "hour": "h", "session": "start", "st": "st"},
        "en": {"kWh": "kWh", "h": "h", "hour": "h", "session": "session", "st": "pc"}}

VAT = {"sv": "moms", "en": "VAT"}
EXCL_VAT = {"sv": "exkl. moms", "en": "excl. VAT"}


def connector_status(status: str, language: str) -> str:
    return CONNECTOR_STATUS[language].get(status, status)
