"""What `GET /models` and `GET /models/{name}` show: versions with their metadata, aliases,
the shadow, triggers, settings, drift, live accuracy and what this worker serves."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from models import CorruptVersionError, RegistryUnavailable
from service import canary
from service.context import Context
from service.monitor import drift


def model_summary(ctx: Context, name: str) -> dict[str, Any]:
    aliases = ctx.registry.aliases(name)
    entry = ctx.pool.entries.get((name, None))
    served = entry.holder.model if entry is not None else None
    return {
        "name": name,
        "production": aliases.get("production"),
        "default": ctx.is_default(name),
        "loaded_here": served.version if served else None,
    }


def model_view(ctx: Context, name: str) -> dict[str, Any]:
    default = ctx.is_default(name)
    entry = ctx.pool.entries.get((name, None))
    holder = ctx.holder if default else (entry.holder if entry else None)
    aliases = ctx.registry.aliases(name)
    versions = []
    registry_error = None
    try:
        listed = ctx.registry.list_versions(name)
    except RegistryUnavailable as exc:  # answer with what this replica knows
        listed, registry_error = sorted(set(aliases.values())), str(exc)
    for version in reversed(listed):
        row: dict[str, Any] = {
            "version": version,
            "aliases": [a for a, v in aliases.items() if v == version],
        }
        try:
            meta = ctx.registry.get(name, version).metadata
        except CorruptVersionError as exc:
            row["status"] = f"corrupt: {exc.problem}"
            versions.append(row)
            continue
        except RegistryUnavailable as exc:
            row["status"] = f"unavailable: {exc}"
            versions.append(row)
            continue
        failed = getattr(holder, "failed_versions", {})
        if version in failed:
            row["status"] = f"failed to load: {failed[version]}"
        else:
            row["status"] = "ok"
        row.update(
            created_at=meta.created_at.isoformat(),
            strategy=meta.strategy,
            reason=meta.reason,
            labels=meta.labels,
            task=meta.task,
            metrics=meta.metrics.model_dump(
                include={"accuracy", "macro_f1", "count", "micro_f1", "hamming_loss"},
                exclude_none=True,
            ),
            thresholds=meta.multi_label.thresholds if meta.multi_label else None,
            data={"count": meta.data.count, "sha256": meta.data.sha256},
            backbone=meta.backbone.name,
            quantized=meta.quantized,
            quantization=(
                meta.quantization.model_dump(
                    include={"served_on_cpu", "fp32_macro_f1", "int8_macro_f1", "reason"}
                )
                if meta.quantization
                else None
            ),
            parent_version=meta.parent_version,
            test_metrics=meta.test_metrics.model_dump(include={"accuracy", "macro_f1", "count"})
            if meta.test_metrics
            else None,
            calibration=meta.calibration.model_dump(
                include={"temperature", "ece_before", "ece_after"}
            )
            if meta.calibration
            else None,
            suspects=len(meta.suspects) if meta.suspects is not None else None,
        )
        versions.append(row)
    served = holder.model if holder is not None else None
    state = ctx.store.triggers.trigger_state(name)
    return {
        "model": name,
        "default": default,
        "production": aliases.get("production"),
        "previous": aliases.get("previous"),
        "shadow": shadow_view(ctx, name, aliases),
        "canary": canary.view(ctx, name, aliases),
        "retrain_policy": {
            # triggers (feedback count, interval, drift) run for every model
            "auto_retrain": ctx.settings_for(name).auto_retrain,
            **ctx.policy(name).to_dict(),
            "state": state,
        },
        "settings": ctx.effective_settings(name),
        "drift": drift(ctx, name, served),
        "live_accuracy": ctx.store.telemetry.live_accuracy(name),
        "ready": served is not None,
        "serving": {
            "version": served.version if served else None,
            "provider": served.provider if served else None,
            "graph": served.graph if served else None,
            "worker_pid": os.getpid(),
            "loaded": served is not None,
            "error": getattr(holder, "error", None),
            "fetch_error": getattr(holder, "fetch_error", None),
            "last_swap": getattr(holder, "last_swap", None),
        },
        "registry": {"url": ctx.registry.url, "error": registry_error},
        "trainer": ctx.settings.trainer,
        "versions": versions,
    }


def shadow_view(ctx: Context, name: str, aliases: dict[str, str]) -> dict[str, Any]:
    shadow, production = aliases.get("shadow"), aliases.get("production")
    slot = ctx.shadows.get(name)
    lat = list(slot.latency) if slot else []

    def ms(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)) * 1000, 2) if values else None

    prod, shad = [p for p, _ in lat], [s for _, s in lat]
    return {
        "version": shadow,
        "fraction": ctx.settings.shadow_fraction,
        "promote_after_labeled": ctx.settings_for(name).shadow_min_labeled,
        "loaded_here": (m.version if slot and (m := slot.holder.model) else None),
        "live": ctx.store.telemetry.shadow_report(name, production, shadow)
        if shadow and production
        else None,
        "latency_this_worker": {
            "samples": len(lat),
            "production_p50_ms": ms(prod, 50),
            "production_p99_ms": ms(prod, 99),
            "shadow_p50_ms": ms(shad, 50),
            "shadow_p99_ms": ms(shad, 99),
        },
        "last_decision": ctx.store.telemetry.shadow_decision(name),
    }
