"""`chargedesk bench ocpp` at toy scale: real server, real station processes, both systems."""

from __future__ import annotations

from chargedesk.bench import ocpp


def test_a_small_benchmark_accounts_for_every_message_on_both_systems() -> None:
    lines: list[str] = []

    figures = ocpp.run(stations=5, duration=5, command_rate=10, find_limit=False,
                       progress=lines.append)

    for system in ("chargedesk", "bare"):
        result = figures[system]
        assert result["stations_connected"] == 5, system
        assert result["stations_charging"] == 5, system
        assert result["commands_sent"] == 50, system
        assert result["commands_ok"] > 0, system
        assert result["commands_answered_by_stations"] == result["commands_ok"], system
        assert 0 < result["command_p50_ms"] <= result["command_p99_ms"] < 1000, system
        assert result["messages_per_s"] > 0, system
        assert result["cpu_percent"] > 0 and result["rss_mb"] > 10, system
        assert result["messages_sent"] == result["server_received"], system
        assert result["results_received"] + result["call_errors"] == result["messages_sent"]
        assert result["lost"] == 0, system
    assert figures["ratio"]["command_p99_ms"] is not None
    assert any("ramp-up" in line or "connected" in line for line in lines)
    assert figures["failures"] == [] and figures["targets"]["command_p99_ms_below"] == 100


def test_missed_targets_are_named() -> None:
    good = {"stations_connected": 1000, "stations_charging": 1000, "lost": 0,
            "command_p99_ms": 18.9}
    assert ocpp.missed_targets(good, 1000) == []
    slow = good | {"stations_charging": 372, "command_p99_ms": 2400.0, "lost": 3}
    assert ocpp.missed_targets(slow, 1000) == [
        "stations_charging 372 of 1000", "lost 3 station CALLs or commands",
        "command p99 2400.0 ms, target below 100.0 ms"]
    assert ocpp.missed_targets({"error": "ReadTimeout('')"}, 1000) == [
        "the run failed: ReadTimeout('')"]


def test_prometheus_counters_are_summed_over_their_labels() -> None:
    text = (
        "# TYPE chargedesk_ocpp_messages_total counter\n"
        'chargedesk_ocpp_messages_total{action="Heartbeat"} 12.0\n'
        'chargedesk_ocpp_messages_total{action="MeterValues"} 30.0\n'
        'chargedesk_ocpp_messages_created{action="Heartbeat"} 1.7e9\n'
        "chargedesk_stations_connected 5.0\n"
    )

    assert ocpp.metric_sum(text, "chargedesk_ocpp_messages_total") == 42
    assert ocpp.metric_sum(text, "chargedesk_stations_connected") == 5


def test_percentiles_use_the_same_method_as_the_bare_baseline() -> None:
    values = [float(n) for n in range(1, 101)]

    assert ocpp.percentile(values, 50) == 50.5
    assert ocpp.percentile(values, 99) == 99.01
    assert ocpp.percentile([], 99) is None
