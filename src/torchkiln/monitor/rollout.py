"""``kiln retrain``'s rollout on a running server (step 6 and the end of step 7): the challenger in shadow,
judged from the prediction log; then as a canary, judged by the sequential test; rolled back past a gate;
and the traffic rule restored. Each step writes its figures into the decision record.

The HTTP and log primitives are in :mod:`torchkiln.monitor.live`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from torchkiln.core.errors import KilnError
from torchkiln.monitor import live
from torchkiln.monitor.decision import DecisionRecord, RetrainSettings, shadow_failures
from torchkiln.serve import registry

log = logging.getLogger("torchkiln.retrain")


@dataclass(frozen=True)
class Live:
    """The running server of the live steps, its prediction log, and the registry it loads from."""

    server: str
    admin_token: str | None
    log_url: str
    model: str
    registry_uri: str

    def traffic(self) -> dict[str, Any]:
        return live.traffic_of(self.server, self.admin_token, self.model)

    def rollback(self, record: DecisionRecord, champion: str) -> None:
        """The challenger alias back to the champion's version, and every worker's challenger arm with it."""
        registry.set_alias(self.model, champion, "challenger", tracking_uri=self.registry_uri)
        assert record.live is not None
        record.live["rollback_reload"] = live.reload_arm(
            self.server, self.admin_token, self.model, "challenger", champion
        )


def shadow_step(
    record: DecisionRecord, at: Live, version: str | None, champion: str, s: RetrainSettings
) -> bool:
    assert version is not None
    reloaded = live.reload_arm(at.server, at.admin_token, at.model, "challenger", version)
    after = live.log_watermark(at.log_url)
    log.info(
        "step 6: %s mirrors %s to version %s on %s workers; waiting for %d requests in the log",
        at.server,
        at.model,
        version,
        reloaded["workers"]["total"],
        s.shadow_requests,
    )
    figs = live.shadow_figures(
        at.log_url,
        at.model,
        version,
        after=after,
        requests=s.shadow_requests,
        timeout_s=s.shadow_timeout_s,
        settle_s=s.shadow_settle_s,
    )
    record.live = {"shadow": figs, "shadow_reload": reloaded}
    log.info("step 6: shadow figures %s", figs)
    failed = shadow_failures(figs, s)
    if not failed:
        return True
    at.rollback(record, champion)  # the server stops mirroring to it
    record.outcome = "rejected"
    record.reason = f"shadow gate on {figs['requests']} requests: {'; '.join(failed)}; rolled back"
    return False


def canary_step(
    record: DecisionRecord,
    at: Live,
    version: str | None,
    champion: str,
    s: RetrainSettings,
    before: dict[str, Any],
) -> bool:
    assert version is not None and record.live is not None
    after = live.log_watermark(at.log_url)
    routed = live.set_traffic(
        at.server, at.admin_token, at.model, challenger_weight=s.canary_weight, shadow=False
    )
    log.info(
        "step 6: canary: version %s answers %.0f%% of %s's request keys on %s workers (was %s)",
        version,
        s.canary_weight * 100,
        at.model,
        routed["workers"]["total"],
        before,
    )
    figs = live.canary_figures(at.server, at.log_url, at.model, version, after=after, s=s)
    record.live["canary"] = figs
    log.info("step 6: canary %s: %s", figs["decision"], figs["reason"])
    if figs["decision"] == "pass":
        return True
    live.set_traffic(at.server, at.admin_token, at.model, **before)  # users first: no more canary answers
    at.rollback(record, champion)
    record.outcome = "rejected"
    record.reason = f"canary gate: {figs['reason']}; rolled back"
    return False


def restore_traffic(record: DecisionRecord, at: Live, rule: dict[str, Any]) -> None:
    """Route by ``rule`` again after a canary; a failure is logged and recorded, not raised, since it may
    come while another error is on its way."""
    try:
        routed = live.set_traffic(at.server, at.admin_token, at.model, **rule)
    except KilnError as exc:
        record.live = (record.live or {}) | {"traffic_restore_failed": str(exc)}
        log.error(
            "step 7: %s still routes the canary's share: %s. PUT the rule %s yourself.", at.model, exc, rule
        )
        return
    record.live = (record.live or {}) | {"traffic_restored": routed["traffic"]}
    log.info("step 7: %s routes by %s again", at.model, routed["traffic"])
