"""OCPP 1.6 smart charging: the charging-profile stack as pure functions.

Profiles are plain dicts in the camelCase form of a SetChargingProfile request
(`chargingProfileId`, `stackLevel`, `chargingProfilePurpose`, `chargingSchedule`, ...).
Installed profiles are kept per connector as ``{connector_id: [profile, ...]}``; connector 0
holds the charge-point-wide ones (ChargePointMaxProfile, and TxDefaultProfiles that apply
to every connector).

The rules follow OCPP 1.6 section 3.13: within a purpose the valid profile with the highest
stack level prevails, a TxProfile overrides the TxDefaultProfile, and the ChargePointMaxProfile
caps the result. A profile is "valid" at an instant only while its schedule covers that
instant, so a short high-stack profile falls back to the one below it when it runs out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

Profile = dict[str, Any]
Installed = Mapping[int, Sequence[Profile]]

VOLTAGE = 230.0
DEFAULT_PHASES = 3

CHARGE_POINT_MAX = "ChargePointMaxProfile"
TX_DEFAULT = "TxDefaultProfile"
TX = "TxProfile"

_RECURRENCE = {"Daily": timedelta(days=1), "Weekly": timedelta(weeks=1)}


@dataclass(frozen=True)
class Limit:
    """A charging limit: `value` in `unit` ("A" per phase or "W" in total)."""

    value: float
    unit: str
    number_phases: int = DEFAULT_PHASES

    def to(self, unit: str) -> Limit:
        """The same limit expressed in `unit`, at 230 V per phase."""
        if unit == self.unit:
            return self
        factor = VOLTAGE * self.number_phases
        value = self.value * factor if unit == "W" else self.value / factor
        return Limit(value, unit, self.number_phases)


def parse_time(value: str | datetime) -> datetime:
    """An OCPP dateTime as an aware UTC datetime (naive values are taken as UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def format_time(value: datetime) -> str:
    """An aware datetime as an OCPP dateTime string with millisecond precision."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _camelise(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {_camel(k): _camelise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camelise(v) for v in value]
    return value


def normalise_profile(profile: Mapping[str, Any]) -> Profile:
    """A profile in camelCase with float limits.

    The ocpp library hands handlers snake_case keys and, for SetChargingProfile, Decimal
    numbers; this accepts either spelling so callers need not care where a profile came from.
    """
    result: Profile = _camelise(dict(profile))
    schedule = result["chargingSchedule"]
    schedule["chargingSchedulePeriod"] = [
        {**period, "startPeriod": int(period["startPeriod"]), "limit": float(period["limit"])}
        for period in schedule["chargingSchedulePeriod"]
    ]
    if schedule.get("minChargingRate") is not None:
        schedule["minChargingRate"] = float(schedule["minChargingRate"])
    return result


def schedule_start(
    profile: Profile, at: datetime, *, transaction_start: datetime | None = None
) -> datetime:
    """When the schedule period that covers `at` began.

    Relative profiles (and Absolute ones without `startSchedule`) run from the start of the
    transaction; with no transaction they are taken to start at `at`, which is what a station
    reports for a car that would plug in now. Recurring profiles restart every day or week
    from their `startSchedule`.
    """
    schedule = profile["chargingSchedule"]
    kind = profile.get("chargingProfileKind", "Absolute")
    anchor = schedule.get("startSchedule")
    if kind == "Relative" or anchor is None:
        return transaction_start or at
    start = parse_time(anchor)
    if kind == "Recurring":
        period = _RECURRENCE[profile.get("recurrencyKind", "Daily")]
        start += period * math.floor((at - start) / period)
    return start


def _is_within_validity(profile: Profile, at: datetime) -> bool:
    valid_from = profile.get("validFrom")
    valid_to = profile.get("validTo")
    if valid_from is not None and at < parse_time(valid_from):
        return False
    return valid_to is None or at < parse_time(valid_to)


def profile_limit(
    profile: Profile, at: datetime, *, transaction_start: datetime | None = None
) -> Limit | None:
    """The limit one profile sets at `at`, or None if it does not apply then."""
    if not _is_within_validity(profile, at):
        return None
    schedule = profile["chargingSchedule"]
    offset = (at - schedule_start(profile, at, transaction_start=transaction_start)).total_seconds()
    duration = schedule.get("duration")
    if offset < 0 or (duration is not None and offset >= duration):
        return None
    current = None
    for period in schedule["chargingSchedulePeriod"]:
        if period["startPeriod"] <= offset:
            current = period
    if current is None:
        return None
    phases = current.get("numberPhases") or DEFAULT_PHASES
    return Limit(float(current["limit"]), schedule["chargingRateUnit"], phases)


def prevailing_profile(
    profiles: Iterable[Profile],
    at: datetime,
    *,
    transaction_start: datetime | None = None,
) -> tuple[Profile, Limit] | None:
    """The profile with the highest stack level that applies at `at`, with its limit."""
    best: tuple[Profile, Limit] | None = None
    for profile in profiles:
        limit = profile_limit(profile, at, transaction_start=transaction_start)
        if limit is not None and (best is None or profile["stackLevel"] > best[0]["stackLevel"]):
            best = (profile, limit)
    return best


def _of_purpose(profiles: Iterable[Profile], purpose: str) -> list[Profile]:
    return [p for p in profiles if p["chargingProfilePurpose"] == purpose]


def _prevailing_limit(
    profiles: Iterable[Profile], at: datetime, transaction_start: datetime | None
) -> Limit | None:
    found = prevailing_profile(profiles, at, transaction_start=transaction_start)
    return None if found is None else found[1]


def limit_at(
    installed: Installed,
    connector_id: int,
    at: datetime,
    *,
    unit: str = "A",
    transaction_id: int | None = None,
    transaction_start: datetime | None = None,
) -> Limit | None:
    """The limit in force on a connector at `at` in `unit`, or None when unconstrained.

    A transaction is running when `transaction_id` or `transaction_start` is given; only then
    do TxProfiles count (those naming another transactionId never do). Connector 0 answers
    for the charge point as a whole: only the ChargePointMaxProfile.
    """
    at = parse_time(at)
    station_wide = installed.get(0, ())
    cap = _prevailing_limit(_of_purpose(station_wide, CHARGE_POINT_MAX), at, transaction_start)
    limit = None
    if connector_id != 0:
        own = installed.get(connector_id, ())
        if transaction_id is not None or transaction_start is not None:
            tx_profiles = [
                p for p in _of_purpose(own, TX) if p.get("transactionId") in (None, transaction_id)
            ]
            limit = _prevailing_limit(tx_profiles, at, transaction_start)
        if limit is None:
            # A TxDefaultProfile on the connector itself overrides the station-wide default.
            limit = _prevailing_limit(_of_purpose(own, TX_DEFAULT), at, transaction_start)
        if limit is None:
            limit = _prevailing_limit(_of_purpose(station_wide, TX_DEFAULT), at, transaction_start)
    candidates = [x.to(unit) for x in (limit, cap) if x is not None]
    if not candidates:
        return None
    return min(candidates, key=lambda x: x.value)


def _breakpoints(
    profile: Profile, start: datetime, end: datetime, transaction_start: datetime | None
) -> set[datetime]:
    """Every instant in the window where this profile's limit can change."""
    points: set[datetime] = set()
    for key in ("validFrom", "validTo"):
        if profile.get(key) is not None:
            points.add(parse_time(profile[key]))
    schedule = profile["chargingSchedule"]
    first = schedule_start(profile, start, transaction_start=transaction_start)
    starts = [first]
    if profile.get("chargingProfileKind") == "Recurring" and schedule.get("startSchedule"):
        period = _RECURRENCE[profile.get("recurrencyKind", "Daily")]
        while starts[-1] < end:
            starts.append(starts[-1] + period)
    for begin in starts:
        for period in schedule["chargingSchedulePeriod"]:
            points.add(begin + timedelta(seconds=period["startPeriod"]))
        if schedule.get("duration") is not None:
            points.add(begin + timedelta(seconds=schedule["duration"]))
    return {p for p in points if start < p < end}


def composite_schedule(
    installed: Installed,
    connector_id: int,
    start: datetime,
    duration: int,
    *,
    unit: str = "A",
    transaction_id: int | None = None,
    transaction_start: datetime | None = None,
    max_current: float = 32.0,
    phases: int = DEFAULT_PHASES,
) -> Profile:
    """The chargingSchedule a GetCompositeSchedule.conf reports for `duration` seconds.

    Limits are the stack's result capped by the hardware (`max_current` amps per phase on
    `phases` phases); stretches that no profile constrains get the hardware limit. Adjacent
    periods with the same limit are merged, and limits are rounded to 0.1 as the schema asks.
    """
    start = parse_time(start)
    end = start + timedelta(seconds=duration)
    # With no transaction a Relative profile is reported as if one started now.
    tx_start = transaction_start or start
    hardware = Limit(max_current, "A", phases).to(unit)
    relevant = list(installed.get(0, ())) + list(installed.get(connector_id, ()))
    points = {start}
    for profile in relevant:
        points |= _breakpoints(profile, start, end, tx_start)
    periods: list[dict[str, Any]] = []
    for point in sorted(points):
        # Whole seconds: a breakpoint inside a second takes effect from the next one.
        offset = math.ceil((point - start).total_seconds())
        limit = limit_at(
            installed,
            connector_id,
            start + timedelta(seconds=offset),
            unit=unit,
            transaction_id=transaction_id,
            transaction_start=tx_start,
        )
        if limit is None or limit.value > hardware.value:
            limit = hardware
        period = {
            "startPeriod": offset,
            "limit": round(limit.value, 1),
            "numberPhases": limit.number_phases,
        }
        if periods and periods[-1]["startPeriod"] == offset:
            periods[-1] = period
        elif not periods or (periods[-1]["limit"], periods[-1]["numberPhases"]) != (
            period["limit"],
            period["numberPhases"],
        ):
            periods.append(period)
    return {
        "duration": duration,
        "startSchedule": format_time(start),
        "chargingRateUnit": unit,
        "chargingSchedulePeriod": periods,
    }


@dataclass(frozen=True)
class StationLimits:
    """What a station advertises about its smart-charging support (its configuration keys)."""

    number_of_connectors: int = 2
    max_stack_level: int = 10
    max_periods: int = 24
    allowed_units: tuple[str, ...] = ("Current", "Power")
    max_installed: int = 20


def rejection_reason(
    installed: Installed,
    connector_id: int,
    profile: Profile,
    *,
    active_transaction_id: int | None,
    limits: StationLimits | None = None,
) -> str | None:
    """Why a SetChargingProfile would be Rejected, or None if it is acceptable."""
    limits = limits or StationLimits()
    purpose = profile["chargingProfilePurpose"]
    schedule = profile["chargingSchedule"]
    periods = schedule["chargingSchedulePeriod"]
    starts = [p["startPeriod"] for p in periods]
    unit_name = {"A": "Current", "W": "Power"}[schedule["chargingRateUnit"]]
    if not 0 <= connector_id <= limits.number_of_connectors:
        return "unknown connector"
    if purpose == CHARGE_POINT_MAX and connector_id != 0:
        return "ChargePointMaxProfile is only allowed on connector 0"
    if purpose == TX:
        if connector_id == 0:
            return "TxProfile needs a connector"
        if active_transaction_id is None:
            return "TxProfile needs an active transaction on the connector"
        if profile.get("transactionId") not in (None, active_transaction_id):
            return "TxProfile is for another transaction"
    if not 0 <= profile["stackLevel"] <= limits.max_stack_level:
        return "stackLevel out of range"
    if not periods or starts[0] != 0 or starts != sorted(set(starts)):
        return "periods must start at 0 and ascend"
    if len(periods) > limits.max_periods:
        return "too many periods"
    if unit_name not in limits.allowed_units:
        return f"charging rate unit {schedule['chargingRateUnit']} not supported"
    if profile["chargingProfileKind"] == "Recurring" and not (
        profile.get("recurrencyKind") and schedule.get("startSchedule")
    ):
        return "Recurring needs recurrencyKind and startSchedule"
    if sum(len(v) for v in install_profile(installed, connector_id, profile).values()) > (
        limits.max_installed
    ):
        return "too many profiles installed"
    return None


def _replaces(new: Profile, old: Profile, same_connector: bool) -> bool:
    if old["chargingProfileId"] == new["chargingProfileId"]:
        return True
    return same_connector and (old["stackLevel"], old["chargingProfilePurpose"]) == (
        new["stackLevel"],
        new["chargingProfilePurpose"],
    )


def install_profile(
    installed: Installed, connector_id: int, profile: Profile
) -> dict[int, list[Profile]]:
    """The installed set after adding `profile` to a connector.

    A profile with the same id anywhere, or the same stackLevel and purpose on the same
    connector, is replaced.
    """
    result = {
        cid: [p for p in profiles if not _replaces(profile, p, cid == connector_id)]
        for cid, profiles in installed.items()
    }
    result.setdefault(connector_id, []).append(profile)
    return {cid: profiles for cid, profiles in result.items() if profiles}


def clear_profiles(
    installed: Installed,
    *,
    profile_id: int | None = None,
    connector_id: int | None = None,
    purpose: str | None = None,
    stack_level: int | None = None,
) -> tuple[dict[int, list[Profile]], int]:
    """The installed set after a ClearChargingProfile, and how many profiles it removed.

    An id alone decides; otherwise every given criterion must match, and none given
    clears everything.
    """

    def matches(cid: int, p: Profile) -> bool:
        if profile_id is not None:
            return p["chargingProfileId"] == profile_id
        return (
            (connector_id is None or cid == connector_id)
            and (purpose is None or p["chargingProfilePurpose"] == purpose)
            and (stack_level is None or p["stackLevel"] == stack_level)
        )

    kept = {cid: [p for p in ps if not matches(cid, p)] for cid, ps in installed.items()}
    removed = sum(len(ps) for ps in installed.values()) - sum(len(ps) for ps in kept.values())
    return {cid: ps for cid, ps in kept.items() if ps}, removed


def end_transaction(installed: Installed, connector_id: int) -> dict[int, list[Profile]]:
    """The installed set once a transaction on the connector ends: its TxProfiles go."""
    return clear_profiles(installed, connector_id=connector_id, purpose=TX)[0]
