"""When a model retrains by itself: the policy (pure, the unit tests' subject). The state it
looks at is the store's (`TriggerStore.trigger_state`), the same on every replica."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RetrainPolicy:
    """When a model retrains by itself; every trigger needs new labeled examples."""

    min_pending: int = 200  # (a) this many new labeled examples; 0: off
    interval_s: float = 0.0  # (b) this long since the last successful job; 0: off
    drift_threshold: float = 0.2  # (c) label-distribution JS divergence at or above; 0: off
    backoff_s: float = 600.0  # after a failed automatic job; doubles per consecutive failure

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fires(
        self, state: dict[str, Any], drift: float | None, now: float
    ) -> tuple[str, str] | None:
        return trigger_cause(self, state, drift, now)


def trigger_cause(
    policy: RetrainPolicy, state: dict[str, Any], drift: float | None, now: float
) -> tuple[str, str] | None:
    """Why an automatic retrain should start now, or None. Pure: the unit tests' subject."""
    pending = state["pending"]
    if pending == 0 or state["active_job"] is not None:
        return None
    failures = state["consecutive_failures"]
    if failures and state["last_failure_at"] is not None:
        wait = policy.backoff_s * 2 ** (failures - 1)
        if now < state["last_failure_at"] + wait:
            return None
    if policy.min_pending and pending >= policy.min_pending:
        return "pending", f"{pending} new labeled examples pending (threshold {policy.min_pending})"
    if policy.interval_s:
        since = state["last_success_at"] or state["first_pending_at"]
        if since is not None and now - since >= policy.interval_s:
            return (
                "schedule",
                f"{now - since:.0f} s since the last retrain (interval {policy.interval_s:g} s), {pending} new examples",
            )
    if policy.drift_threshold and drift is not None and drift >= policy.drift_threshold:
        return (
            "drift",
            f"label distribution JS divergence {drift:.3f} >= {policy.drift_threshold:g}, {pending} new examples",
        )
    return None
