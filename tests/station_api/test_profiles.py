"""Charging-profile stacking and composite schedules (OCPP 1.6 section 3.13)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from station_api.profiles import (
    Limit,
    StationLimits,
    clear_profiles,
    composite_schedule,
    end_transaction,
    install_profile,
    limit_at,
    normalise_profile,
    rejection_reason,
)

T0 = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)  # a Monday


def profile(
    profile_id: int,
    purpose: str,
    periods: list[tuple[int, float]],
    *,
    stack: int = 0,
    kind: str = "Absolute",
    unit: str = "A",
    start: datetime | None = T0,
    duration: int | None = None,
    **extra,
) -> dict:
    schedule = {
        "chargingRateUnit": unit,
        "chargingSchedulePeriod": [{"startPeriod": s, "limit": v} for s, v in periods],
    }
    if start is not None:
        schedule["startSchedule"] = start.isoformat().replace("+00:00", "Z")
    if duration is not None:
        schedule["duration"] = duration
    return {
        "chargingProfileId": profile_id,
        "stackLevel": stack,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": kind,
        "chargingSchedule": schedule,
        **extra,
    }


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def amps(installed, connector=1, when=T0, **kwargs) -> float | None:
    limit = limit_at(installed, connector, when, unit="A", **kwargs)
    return None if limit is None else round(limit.value, 2)


def test_the_period_in_force_is_the_last_one_started():
    p = profile(1, "TxDefaultProfile", [(0, 32), (3600, 16), (7200, 8)])
    installed = {1: [p]}
    assert amps(installed, when=at(0)) == 32
    assert amps(installed, when=at(3599)) == 32
    assert amps(installed, when=at(3600)) == 16
    assert amps(installed, when=at(86_400)) == 8  # no duration: the last period runs on


def test_no_profile_means_no_limit():
    assert limit_at({}, 1, T0) is None
    assert amps({1: [profile(1, "TxDefaultProfile", [(0, 16)])]}, when=at(-1)) is None


def test_higher_stack_level_wins_and_falls_back_when_its_schedule_ends():
    base = profile(1, "TxDefaultProfile", [(0, 32)], stack=0)
    evening_cut = profile(2, "TxDefaultProfile", [(0, 10)], stack=1, start=at(600), duration=600)
    installed = {1: [base, evening_cut]}
    assert amps(installed, when=at(599)) == 32
    assert amps(installed, when=at(600)) == 10
    assert amps(installed, when=at(1199)) == 10
    assert amps(installed, when=at(1200)) == 32


def test_tx_profile_overrides_tx_default_only_during_its_transaction():
    default = profile(1, "TxDefaultProfile", [(0, 32)], stack=5)
    tx = profile(2, "TxProfile", [(0, 6)], kind="Relative", start=None, transactionId=42)
    installed = {1: [default, tx]}
    assert amps(installed, transaction_id=42, transaction_start=T0) == 6
    assert amps(installed, transaction_id=43, transaction_start=T0) == 32
    assert amps(installed) == 32  # no transaction running


def test_connector_tx_default_overrides_the_station_wide_one():
    station_wide = profile(1, "TxDefaultProfile", [(0, 20)], stack=3)
    own = profile(2, "TxDefaultProfile", [(0, 12)], stack=0)
    installed = {0: [station_wide], 1: [own]}
    assert amps(installed, connector=1) == 12
    assert amps(installed, connector=2) == 20


def test_charge_point_max_caps_every_connector_across_units():
    cap = profile(1, "ChargePointMaxProfile", [(0, 11_040)], unit="W")  # 16 A on 3 phases
    default = profile(2, "TxDefaultProfile", [(0, 32)])
    installed = {0: [cap], 1: [default]}
    assert amps(installed, connector=1) == 16
    assert amps(installed, connector=2) == 16
    assert limit_at(installed, 0, T0, unit="W") == Limit(11_040, "W", 3)


def test_relative_profile_runs_from_transaction_start():
    tx = profile(1, "TxProfile", [(0, 16), (1800, 8)], kind="Relative", start=None)
    installed = {1: [tx]}
    started = at(100)
    assert amps(installed, when=at(1899), transaction_start=started) == 16
    assert amps(installed, when=at(1900), transaction_start=started) == 8


def test_recurring_daily_profile_repeats_every_day():
    night = profile(
        1,
        "TxDefaultProfile",
        [(0, 8), (3600, 32)],  # 08:00-09:00 limited, then free
        kind="Recurring",
        recurrencyKind="Daily",
    )
    installed = {1: [night]}
    assert amps(installed, when=T0 + timedelta(days=3, minutes=30)) == 8
    assert amps(installed, when=T0 + timedelta(days=3, hours=2)) == 32
    assert amps(installed, when=T0 - timedelta(minutes=1)) == 32  # yesterday's 07:59


def test_validity_window_bounds_a_profile():
    p = profile(
        1,
        "TxDefaultProfile",
        [(0, 10)],
        validFrom="2025-03-03T09:00:00Z",
        validTo="2025-03-03T10:00:00Z",
    )
    installed = {1: [p]}
    assert amps(installed, when=at(3599)) is None
    assert amps(installed, when=at(3600)) == 10
    assert amps(installed, when=at(7200)) is None


def test_amps_convert_to_watts_by_phases_at_230_volts():
    assert Limit(16, "A", 3).to("W").value == pytest.approx(11_040)
    assert Limit(16, "A", 1).to("W").value == pytest.approx(3_680)
    assert Limit(7_360, "W", 1).to("A").value == pytest.approx(32)


def test_composite_schedule_merges_the_stack_into_periods():
    cap = profile(1, "ChargePointMaxProfile", [(0, 20)])
    default = profile(2, "TxDefaultProfile", [(0, 32), (600, 10), (1200, 32)])
    peak = profile(3, "TxDefaultProfile", [(0, 6)], stack=1, start=at(900), duration=60)
    schedule = composite_schedule({0: [cap], 1: [default, peak]}, 1, T0, 1800)
    assert schedule["chargingRateUnit"] == "A"
    assert schedule["duration"] == 1800
    assert schedule["startSchedule"] == "2025-03-03T08:00:00.000Z"
    assert [(p["startPeriod"], p["limit"]) for p in schedule["chargingSchedulePeriod"]] == [
        (0, 20),
        (600, 10),
        (900, 6),
        (960, 10),
        (1200, 20),
    ]


def test_composite_schedule_in_watts_fills_gaps_with_the_hardware_limit():
    short = profile(1, "TxDefaultProfile", [(0, 10)], duration=300)
    schedule = composite_schedule({1: [short]}, 1, T0, 600, unit="W", max_current=16)
    assert [(p["startPeriod"], p["limit"]) for p in schedule["chargingSchedulePeriod"]] == [
        (0, 6900.0),
        (300, 11040.0),
    ]


def test_composite_schedule_treats_relative_profile_as_starting_now_without_transaction():
    tx_default = profile(1, "TxDefaultProfile", [(0, 16), (60, 8)], kind="Relative", start=None)
    schedule = composite_schedule({1: [tx_default]}, 1, at(5000), 120)
    assert [(p["startPeriod"], p["limit"]) for p in schedule["chargingSchedulePeriod"]] == [
        (0, 16),
        (60, 8),
    ]


@pytest.mark.parametrize(
    ("connector", "new", "active_tx", "reason"),
    [
        (1, profile(1, "ChargePointMaxProfile", [(0, 16)]), None, "only allowed on connector 0"),
        (1, profile(1, "TxProfile", [(0, 16)]), None, "needs an active transaction"),
        (0, profile(1, "TxProfile", [(0, 16)]), 7, "needs a connector"),
        (1, profile(1, "TxProfile", [(0, 16)], transactionId=8), 7, "another transaction"),
        (1, profile(1, "TxDefaultProfile", [(0, 16)], stack=11), None, "stackLevel"),
        (1, profile(1, "TxDefaultProfile", [(10, 16)]), None, "start at 0"),
        (1, profile(1, "TxDefaultProfile", [(0, 16), (0, 8)]), None, "ascend"),
        (3, profile(1, "TxDefaultProfile", [(0, 16)]), None, "unknown connector"),
        (1, profile(1, "TxDefaultProfile", [(0, 16)], kind="Recurring"), None, "recurrencyKind"),
    ],
)
def test_set_charging_profile_is_rejected_when_it_breaks_a_rule(connector, new, active_tx, reason):
    found = rejection_reason({}, connector, new, active_transaction_id=active_tx)
    assert found is not None and reason in found


def test_set_charging_profile_accepts_valid_profiles():
    assert (
        rejection_reason(
            {}, 0, profile(1, "ChargePointMaxProfile", [(0, 16)]), active_transaction_id=None
        )
        is None
    )
    assert (
        rejection_reason(
            {}, 1, profile(2, "TxProfile", [(0, 16)], transactionId=7), active_transaction_id=7
        )
        is None
    )


def test_rejects_units_and_counts_the_station_does_not_support():
    only_amps = StationLimits(allowed_units=("Current",), max_installed=1)
    watts = profile(1, "TxDefaultProfile", [(0, 11_000)], unit="W")
    assert "not supported" in rejection_reason(
        {}, 1, watts, active_transaction_id=None, limits=only_amps
    )
    full = {1: [profile(1, "TxDefaultProfile", [(0, 16)])]}
    second = profile(2, "TxDefaultProfile", [(0, 16)], stack=1)
    assert "too many" in rejection_reason(
        full, 1, second, active_transaction_id=None, limits=only_amps
    )


def test_install_replaces_same_id_or_same_stack_and_purpose_on_the_connector():
    a = profile(1, "TxDefaultProfile", [(0, 32)], stack=0)
    b = profile(2, "TxDefaultProfile", [(0, 16)], stack=1)
    installed = install_profile(install_profile({}, 1, a), 1, b)
    same_slot = profile(3, "TxDefaultProfile", [(0, 8)], stack=1)
    installed = install_profile(installed, 1, same_slot)
    assert [p["chargingProfileId"] for p in installed[1]] == [1, 3]
    moved = profile(1, "TxDefaultProfile", [(0, 20)], stack=1)
    installed = install_profile(installed, 2, moved)  # same id moves, even across connectors
    assert [p["chargingProfileId"] for p in installed[1]] == [3]
    assert [p["chargingProfileId"] for p in installed[2]] == [1]


def test_clear_by_id_or_by_criteria_reports_what_it_removed():
    installed = {
        0: [profile(1, "ChargePointMaxProfile", [(0, 40)])],
        1: [profile(2, "TxDefaultProfile", [(0, 16)]), profile(3, "TxProfile", [(0, 8)], stack=2)],
    }
    after, removed = clear_profiles(installed, profile_id=3)
    assert removed == 1 and [p["chargingProfileId"] for p in after[1]] == [2]
    after, removed = clear_profiles(installed, purpose="TxDefaultProfile", connector_id=1)
    assert removed == 1
    after, removed = clear_profiles(installed, stack_level=7)
    assert removed == 0 and after == installed
    assert clear_profiles(installed)[0] == {}
    assert [p["chargingProfileId"] for p in end_transaction(installed, 1)[1]] == [2]


def test_normalise_accepts_the_snake_case_and_decimals_the_ocpp_library_hands_over():
    raw = {
        "charging_profile_id": 4,
        "stack_level": 1,
        "charging_profile_purpose": "TxProfile",
        "charging_profile_kind": "Relative",
        "charging_schedule": {
            "charging_rate_unit": "A",
            "charging_schedule_period": [{"start_period": 0, "limit": Decimal("12.5")}],
            "min_charging_rate": Decimal("6.0"),
        },
    }
    p = normalise_profile(raw)
    assert p["chargingProfileId"] == 4
    assert p["chargingSchedule"]["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 12.5}]
    assert isinstance(p["chargingSchedule"]["minChargingRate"], float)
