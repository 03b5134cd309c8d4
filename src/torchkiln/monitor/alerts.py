"""Alert state: one alert per incident, no flapping, and no storm of retrains.

Pure logic over the verdicts of successive checks (True: drift, False: clean, None: not enough data).
The watch loop keeps an :class:`AlertState`, feeds it each check's verdict with the time, acts on the
event it returns, and persists it between runs with :meth:`AlertState.to_json`.

- **Hysteresis**: an incident opens after ``raise_after`` drifted checks in a row and closes after
  ``clear_after`` clean checks in a row; a single odd check does neither.
- **One alert per incident**: while an incident is open, further drifted checks send nothing.
- **Cooldown**: an incident that opens less than ``cooldown_s`` seconds after the last alert is recorded
  ("suppressed") but sends no alert, so an incident that closes and reopens cannot trigger retrain
  after retrain. If it is still open, and still drifting, when the cooldown ends, it sends its one alert
  then: a lasting drift is never silenced for good.
- "Not enough data" changes nothing: it neither extends nor breaks a run of checks.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from torchkiln.core.errors import ConfigError

Status = Literal["ok", "incident"]
Event = Literal["alert", "suppressed", "resolved"]


@dataclass(frozen=True)
class AlertPolicy:
    """When an incident opens and closes, and how soon after an alert another may be sent.

    Attributes:
        raise_after: drifted checks in a row that open an incident (default 3).
        clear_after: clean checks in a row that close it (default 3).
        cooldown_s: seconds after an alert during which a new incident sends no alert (default 6 h).
    """

    raise_after: int = 3
    clear_after: int = 3
    cooldown_s: float = 6 * 3600.0

    def __post_init__(self) -> None:
        if self.raise_after < 1 or self.clear_after < 1 or self.cooldown_s < 0:
            raise ConfigError(
                f"AlertPolicy needs raise_after >= 1, clear_after >= 1 and cooldown_s >= 0; got "
                f"raise_after={self.raise_after}, clear_after={self.clear_after}, "
                f"cooldown_s={self.cooldown_s}. Fix: use the defaults 3, 3 and 21600."
            )


@dataclass(frozen=True)
class AlertState:
    """Where one monitored model version stands; immutable, each check returns a new state.

    Attributes:
        status: "ok" or "incident" (an incident is open).
        drift_streak: drifted checks in a row so far.
        clean_streak: clean checks in a row so far.
        last_alert_at: the time (seconds, the caller's clock) of the last alert sent, or None.
        alerted: whether the open incident has sent its alert (False while suppressed by the cooldown).

    Example:
        >>> policy, state = AlertPolicy(raise_after=2, clear_after=1, cooldown_s=60), AlertState()
        >>> events = []
        >>> for t, drifted in zip([0, 10, 20, 30, 40, 50, 60, 70], [1, 1, 1, 0, 1, 1, 1, 1]):
        ...     state, event = state.update(bool(drifted), now=float(t), policy=policy)
        ...     events.append(event)
        >>> events
        [None, 'alert', None, 'resolved', None, 'suppressed', None, 'alert']
    """

    status: Status = "ok"
    drift_streak: int = 0
    clean_streak: int = 0
    last_alert_at: float | None = None
    alerted: bool = False

    def update(
        self, drifted: bool | None, *, now: float, policy: AlertPolicy
    ) -> tuple[AlertState, Event | None]:
        """The state after one more check, and the event to act on (or None).

        Args:
            drifted: the check's verdict: True (drift), False (no drift) or None (not enough data).
            now: the check's time in seconds (any clock that only moves forward, e.g. ``time.time()``).
            policy: the thresholds of the hysteresis and the cooldown.

        Returns:
            The new state, and "alert" (send it), "suppressed" (an incident opened inside the cooldown;
            log it, send nothing), "resolved" (the incident closed) or None.
        """
        if drifted is None:
            return self, None
        if not drifted:
            state = replace(self, drift_streak=0, clean_streak=self.clean_streak + 1)
            if state.status == "incident" and state.clean_streak >= policy.clear_after:
                return replace(state, status="ok"), "resolved"
            return state, None
        state = replace(self, drift_streak=self.drift_streak + 1, clean_streak=0)
        opened = state.status == "ok" and state.drift_streak >= policy.raise_after
        if opened:
            state = replace(state, status="incident", alerted=False)
        if state.status == "ok" or state.alerted:
            return state, None
        if state.last_alert_at is not None and now - state.last_alert_at < policy.cooldown_s:
            return state, "suppressed" if opened else None
        return replace(state, alerted=True, last_alert_at=now), "alert"

    def to_json(self) -> str:
        """The state as a JSON object, for the watch loop to keep between runs."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AlertState:
        """Read a state written by :meth:`to_json`; anything else raises ConfigError."""
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"The alert state is not JSON ({e}); expected what AlertState.to_json writes. "
                f"Fix: delete the state file to start from 'ok'."
            ) from None
        fields = set(cls.__dataclass_fields__)
        ok = (
            isinstance(data, dict)
            and set(data) == fields
            and data["status"] in ("ok", "incident")
            and all(isinstance(data[k], int) and data[k] >= 0 for k in ("drift_streak", "clean_streak"))
            and (data["last_alert_at"] is None or isinstance(data["last_alert_at"], int | float))
            and isinstance(data["alerted"], bool)
        )
        if not ok:
            raise ConfigError(
                f"The alert state {text[:200]!r} is not a valid AlertState; expected the keys "
                f"{sorted(fields)} with status 'ok' or 'incident'. Fix: delete the state file to start "
                f"from 'ok'."
            )
        return cls(**data)
