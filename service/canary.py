"""Canary traffic: a version beside production that answers a share of a model's callers
(`POST /models/{name}/canary`), compared with production on the same window, and promoted
or rolled back by the rule below (or by hand: promote it, or stop it).

Routing (`routed`): a caller that sends `X-Refit-Route-Key` is sticky — sha256(model, key)
read as a number in [0, 1) is below the model's `canary_fraction` or not, the same on every
worker and replica; without a key each request is drawn at random. A canary that fails a
request is answered by production instead (counted as a canary error): callers never see
its failures.

The rule (`judge`, every poll of every worker; the alias compare-and-set lets exactly one
decision through), on the window since the canary's first answer:
- roll back at once when its error rate is above production's by more than ERROR_MARGIN
  after MIN_REQUESTS canary requests in this worker;
- once `canary_min_labeled` linked feedback examples confirm or correct the canary's own
  answers (and as many production's), and this worker saw MIN_REQUESTS of its answers,
  promote it when its live accuracy is at least
  production's minus `promotion_tolerance`, its error rate at most production's plus
  ERROR_MARGIN, and its p99 latency at most `canary_latency_factor` (1.5) x production's
  (+5 ms) in this worker's window; roll it back otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from service import metrics

if TYPE_CHECKING:
    from service.context import Context

log = logging.getLogger(__name__)

ROUTE_HEADER = "x-refit-route-key"
MIN_REQUESTS = 50
ERROR_MARGIN = 0.01
LATENCY_SLACK_S = 0.005
RULE = (
    f"roll back when the canary's error rate exceeds production's by {ERROR_MARGIN:.0%}"
    f" (after {MIN_REQUESTS} requests); with canary_min_labeled linked feedback on each,"
    f" promote when live accuracy >= production's - promotion_tolerance, error rate <="
    f" production's + {ERROR_MARGIN:.0%} and p99 <= canary_latency_factor x production's;"
    " else roll back"
)


def routed(name: str, key: str | None, fraction: float) -> bool:
    """Whether this request goes to `name`'s canary."""
    if fraction <= 0:
        return False
    if key:
        digest = hashlib.sha256(f"{name}\0{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < fraction
    return random.random() < fraction


class Window:
    """This worker's answers of one model while it has a canary: per role (production,
    canary), the latency and whether it answered (bounded; a new canary starts a new one)."""

    def __init__(self) -> None:
        self.rows: dict[str, deque[tuple[float, bool]]] = {}

    def add(self, role: str, seconds: float, ok: bool) -> None:
        self.rows.setdefault(role, deque(maxlen=5000)).append((seconds, ok))

    def summary(self, role: str) -> dict[str, Any]:
        rows = list(self.rows.get(role, ()))
        latency = [s for s, ok in rows if ok]
        errors = sum(not ok for _, ok in rows)
        return {
            "requests": len(rows),
            "errors": errors,
            "error_rate": round(errors / len(rows), 4) if rows else None,
            "p50_ms": round(float(np.percentile(latency, 50)) * 1000, 2) if latency else None,
            "p99_ms": round(float(np.percentile(latency, 99)) * 1000, 2) if latency else None,
        }


def record(ctx: Context, name: str, role: str, seconds: float, ok: bool) -> None:
    """One answer of a model that has a canary (production's or the canary's)."""
    ctx.canary_windows.setdefault(name, Window()).add(role, seconds, ok)
    metrics.CANARY_REQUESTS.labels(name, role, "ok" if ok else "error").inc()


def comparison(ctx: Context, name: str, production: str, canary: str) -> dict[str, Any]:
    """Production and canary on the same window: live accuracy from linked feedback since
    the canary's first answer (the store: every worker), errors and latency (this worker)."""
    first = ctx.store.telemetry.first_served(name, canary)
    started = ctx.store.telemetry.shadow_decision(name, alias="canary") or {}
    if started.get("outcome") == "started" and started.get("version") == canary:
        first = max(first or 0.0, float(started["at"]))  # not its earlier life (previous)
    live = ctx.store.telemetry.live_accuracy(name, since=first) if first is not None else {}
    window = ctx.canary_windows.get(name) or Window()
    return {
        "since": first,
        "production": {"version": production, "live": live.get(production)}
        | {"this_worker": window.summary("production")},
        "canary": {"version": canary, "live": live.get(canary)}
        | {"this_worker": window.summary("canary")},
    }


def verdict(
    compared: dict[str, Any], min_labeled: int, tolerance: float, latency_factor: float = 1.5
) -> tuple[bool, str] | None:
    """(promote?, why) by the rule in this module's docstring, or None: not yet."""
    prod, can = compared["production"], compared["canary"]
    p_win, c_win = prod["this_worker"], can["this_worker"]
    p_err, c_err = p_win["error_rate"] or 0.0, c_win["error_rate"] or 0.0
    if c_win["requests"] >= MIN_REQUESTS and c_err > p_err + ERROR_MARGIN:
        return False, f"error rate {c_err:.2%} vs production's {p_err:.2%}"
    p_live, c_live = prod["live"], can["live"]
    if not p_live or not c_live or min(p_live["labeled"], c_live["labeled"]) < min_labeled:
        return None
    if c_win["requests"] < MIN_REQUESTS:  # this worker cannot judge errors and latency
        return None
    accuracy_ok = c_live["accuracy"] >= p_live["accuracy"] - tolerance
    p99_p, p99_c = p_win["p99_ms"], c_win["p99_ms"]
    latency_ok = (
        p99_p is None or p99_c is None or (p99_c <= latency_factor * p99_p + LATENCY_SLACK_S * 1000)
    )
    errors_ok = c_err <= p_err + ERROR_MARGIN
    why = (
        f"live accuracy {c_live['accuracy']:.4f} vs {p_live['accuracy']:.4f} on"
        f" {c_live['labeled']}/{p_live['labeled']} labeled answers (tolerance {tolerance:g}),"
        f" error rate {c_err:.2%} vs {p_err:.2%}, p99 {p99_c} vs {p99_p} ms"
    )
    return accuracy_ok and latency_ok and errors_ok, why


def judge(ctx: Context, name: str) -> dict[str, Any] | None:
    """Promote or roll back `name`'s canary when the rule says so (any worker may)."""
    aliases = ctx.registry.aliases(name)
    production, canary = aliases.get("production"), aliases.get("canary")
    if not production or not canary:
        return None
    settings = ctx.settings_for(name)
    compared = comparison(ctx, name, production, canary)
    decided = verdict(
        compared,
        settings.canary_min_labeled,
        settings.promotion_tolerance,
        settings.canary_latency_factor,
    )
    if decided is None:
        return None
    promote, why = decided
    return end(ctx, name, canary, promote, why, compared, against=production)


def end(
    ctx: Context,
    name: str,
    canary: str,
    promote: bool,
    why: str,
    compared: Any = None,
    against: str | None = None,
) -> dict[str, Any] | None:
    """Promote or roll back `canary` and record the decision; None if decided elsewhere
    (or production moved since `against` was compared with)."""
    production = against or ctx.registry.aliases(name).get("production")
    ended = ctx.registry.end_shadow(
        name, canary, promote=promote, alias="canary", against=production
    )
    if ended is None:
        return None
    decision = {
        "version": canary,
        "against": production,
        "outcome": "promoted" if promote else "rolled_back",
        "reason": why,
        "comparison": compared,
        "at": time.time(),
    }
    ctx.store.telemetry.record_shadow_decision(name, decision, alias="canary")
    ctx.canary_windows.pop(name, None)
    metrics.CANARY_DECISIONS.labels(name, decision["outcome"]).inc()
    log.info("canary %s/%s %s: %s", name, canary, decision["outcome"], why)
    return decision


def view(ctx: Context, name: str, aliases: dict[str, str]) -> dict[str, Any]:
    """The canary section of `GET /models/{name}`: the split, the comparison, the rule."""
    canary, production = aliases.get("canary"), aliases.get("production")
    slot = ctx.canaries.get(name)
    settings = ctx.settings_for(name)
    return {
        "version": canary,
        "fraction": settings.canary_fraction if canary else 0.0,
        "promote_after_labeled": settings.canary_min_labeled,
        "loaded_here": (m.version if slot and (m := slot.holder.model) else None),
        "comparison": comparison(ctx, name, production, canary) if canary and production else None,
        "rule": RULE,
        "last_decision": ctx.store.telemetry.shadow_decision(name, alias="canary"),
    }
