"""The alert state machine: hysteresis, one alert per incident, the cooldown, and its JSON form."""

from __future__ import annotations

import pytest

from torchkiln.core.errors import ConfigError
from torchkiln.monitor.alerts import AlertPolicy, AlertState

POLICY = AlertPolicy(raise_after=3, clear_after=2, cooldown_s=100.0)


def run(
    verdicts: list[bool | None], *, every: float = 10.0, state: AlertState | None = None
) -> list[str | None]:
    """The events of checks made every ``every`` seconds from t = 0."""
    state = state or AlertState()
    events = []
    for i, drifted in enumerate(verdicts):
        state, event = state.update(drifted, now=i * every, policy=POLICY)
        events.append(event)
    return events


def test_an_incident_opens_after_k_drifted_checks_in_a_row_and_alerts_once() -> None:
    assert run([True, True, True, True, True, True]) == [None, None, "alert", None, None, None]


def test_a_single_clean_check_breaks_the_run_so_flapping_never_alerts() -> None:
    assert run([True, True, False, True, True, False, True, True]) == [None] * 8


def test_an_incident_closes_after_m_clean_checks_in_a_row() -> None:
    T, F = True, False
    assert run([T, T, T, F, T, F, F, F]) == [None, None, "alert", None, None, None, "resolved", None]


def test_not_enough_data_neither_extends_nor_breaks_a_run() -> None:
    assert run([True, None, True, None, None, True]) == [None, None, None, None, None, "alert"]
    assert run([True, True, True, False, None, False]) == [None, None, "alert", None, None, "resolved"]


def test_a_new_incident_inside_the_cooldown_is_suppressed_then_alerts_when_the_cooldown_ends() -> None:
    T, F = True, False
    # alert at t=20; resolved at t=40; reopened at t=70 (< 20 + 100): suppressed; t=120 >= 120: alert.
    events = run([T, T, T, F, F, T, T, T, T, T, T, T, T])
    assert events == [
        None,
        None,
        "alert",
        None,
        "resolved",
        None,
        None,
        "suppressed",
        None,
        None,
        None,
        None,
        "alert",
    ]


def test_a_retrain_storm_cannot_happen_alerts_are_at_least_a_cooldown_apart() -> None:
    T, F = True, False
    pattern = [T, T, T, F, F] * 40  # 40 incidents, one opening every 50 s, for 2,000 s
    events = run(pattern)
    times = [i * 10.0 for i, e in enumerate(events) if e == "alert"]
    assert times == [20.0 + 100.0 * i for i in range(20)]  # every other incident: one per cooldown
    assert events.count("suppressed") == 20


def test_the_state_round_trips_through_json() -> None:
    state = AlertState()
    for i, drifted in enumerate([True, True, True, False]):
        state, _ = state.update(drifted, now=float(i), policy=POLICY)
    assert state == AlertState(
        status="incident", drift_streak=0, clean_streak=1, last_alert_at=2.0, alerted=True
    )
    assert AlertState.from_json(state.to_json()) == state
    # A persisted state carries on where it stopped.
    assert run([False], state=AlertState.from_json(state.to_json())) == ["resolved"]


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", '{"status": "open"}', '{"status": "burning", "drift_streak": 0, "clean_streak": 0, '
     '"last_alert_at": null, "alerted": false}'],
)  # fmt: skip
def test_a_bad_state_file_says_how_to_start_again(text: str) -> None:
    with pytest.raises(ConfigError, match="Fix: delete the state file to start from 'ok'"):
        AlertState.from_json(text)


def test_a_policy_out_of_range_is_refused_with_the_defaults() -> None:
    with pytest.raises(ConfigError, match=r"raise_after >= 1.*got raise_after=0.*Fix: use the defaults 3, 3"):
        AlertPolicy(raise_after=0)
