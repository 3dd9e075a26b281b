"""The background loops of an inference worker: follow the registry (hot swap, pool
refresh), and every REFIT_TRIGGER_POLL_S flush live traffic to the store, judge the shadow,
update fleet gauges and drift, and start retrain jobs when a trigger fires."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from models import RegistryError
from service import canary, labeling, metrics
from service.context import Context, retrain_policy
from service.drift import drift_report
from service.runner import JobRunner
from service.stores import StoreUnavailable
from service.stores.schema import ACTIVE_STATES, FAILED, INTERRUPTED

log = logging.getLogger(__name__)
PRUNE_EVERY_S = 600.0


class Monitor:
    def __init__(self, ctx: Context, runner: JobRunner) -> None:
        self.ctx = ctx
        self.runner = runner
        self._tasks: list[asyncio.Task] = []
        self._pruned: dict[str, float] = {}  # model -> when this worker last pruned it

    def start(self) -> None:
        """Start both loops on the running event loop (a BentoML startup hook calls this)."""
        running = asyncio.get_running_loop()
        self._tasks = [running.create_task(self._watch()), running.create_task(self._poll())]

    async def _watch(self) -> None:
        ctx = self.ctx
        while True:
            await asyncio.sleep(ctx.settings.swap_poll_s)
            with contextlib.suppress(Exception):  # quick reads first: swaps can take seconds
                await asyncio.to_thread(ctx.reread_settings)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(ctx.swap)
            with contextlib.suppress(Exception):
                ctx.pool.drop(await asyncio.to_thread(ctx.pool.refresh))
            with contextlib.suppress(Exception):
                ctx.drop_shadows()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.ctx.settings.trigger_poll_s)
            try:
                await self.flush_and_trigger()
            except Exception:  # never let the loop die; the next poll tries again
                log.exception("trigger check failed")

    async def flush_and_trigger(self) -> None:
        """Flush every model's traffic, then for each model: live accuracy, drift and
        out-of-scope gauges, its shadow's judgement and its triggers. One model's failure
        never stops the others' (logged, retried at the next poll)."""
        ctx = self.ctx
        served, ctx.served_ids = ctx.served_ids, []
        queued, ctx.queue_inputs = ctx.queue_inputs, []
        await self.flush_traffic()
        if served:  # best effort: a lost flush loses links to feedback, never predictions
            with contextlib.suppress(StoreUnavailable):
                await asyncio.to_thread(
                    ctx.store.telemetry.add_predictions, served, keep=ctx.settings.prediction_window
                )
        if queued:  # best effort, like the window above
            with contextlib.suppress(StoreUnavailable):
                await asyncio.to_thread(labeling.flush_inputs, ctx, queued)
        here = ctx.served_here()
        for name in here:  # score new queue items ahead of the console
            with contextlib.suppress(Exception):
                await labeling.refresh(ctx, name, budget_s=1.0)
        with contextlib.suppress(StoreUnavailable):
            await asyncio.to_thread(self.fleet_metrics)
        models = await asyncio.to_thread(ctx.store.aliases.models)
        for name in sorted(set(models) | set(here)):
            try:
                await self.check_model(name, here.get(name))
            except StoreUnavailable:
                raise
            except Exception:
                log.exception("checks of model %s failed", name)

    async def flush_traffic(self) -> None:
        """Drift counts and uncertain inputs of every model to the store; kept for the next
        flush when the store is away (drift counts are not lost)."""
        ctx = self.ctx
        traffic, ctx.traffic = ctx.traffic, {}
        uncertain, ctx.uncertain = ctx.uncertain, []
        by_model: dict[str, dict[tuple[str, str], tuple[int, float]]] = {}
        for (name, version, label), (n, c) in traffic.items():
            by_model.setdefault(name, {})[(version, label)] = (int(n), c)
        flushed: set[str] = set()
        try:
            for name, counts in by_model.items():
                await asyncio.to_thread(ctx.store.telemetry.add_traffic, name, counts)
                flushed.add(name)
        except StoreUnavailable:
            for key, (n, c) in traffic.items():
                if key[0] not in flushed:
                    seen = ctx.traffic.setdefault(key, [0, 0.0])
                    seen[0] += n
                    seen[1] += c
            ctx.uncertain = (uncertain + ctx.uncertain)[:1000]
            raise
        flushed_uncertain: set[str] = set()
        rows: dict[str, list[tuple[str, str, float, str, float]]] = {}
        for name, *row in uncertain:
            rows.setdefault(name, []).append(tuple(row))  # type: ignore[arg-type]
        for name, model_rows in rows.items():
            try:
                await asyncio.to_thread(
                    ctx.store.telemetry.add_uncertain,
                    name,
                    model_rows,
                    keep_text=ctx.settings.store_uncertain_texts,
                )
            except StoreUnavailable:  # this model's and the later ones' for the next flush
                left = [r for r in uncertain if r[0] not in flushed_uncertain]
                ctx.uncertain = (left + ctx.uncertain)[:1000]
                raise
            flushed_uncertain.add(name)

    async def check_model(self, name: str, model: Any) -> None:
        """`model`: the version serving `name` in this worker (None: not loaded here)."""
        ctx = self.ctx
        if model is not None:  # served here: feedback may have confirmed some of it
            accuracy = await asyncio.to_thread(ctx.store.telemetry.live_accuracy, name)
            for version, row in accuracy.items():
                metrics.LIVE_ACCURACY.labels(name, version).set(row["accuracy"])
        if name in ctx.shadows:
            await asyncio.to_thread(self.judge_shadow, name)
        if name in ctx.canaries:
            await asyncio.to_thread(canary.judge, ctx, name)
        report = await asyncio.to_thread(drift, ctx, name, model)
        if report is not None:
            for gauge, key in (
                (metrics.DRIFT_JS, "label_js_divergence"),
                (metrics.LIVE_CONFIDENCE, "live_mean_confidence"),
                (metrics.LIVE_OUT_OF_SCOPE, "live_out_of_scope_rate"),
            ):
                if report[key] is not None:
                    gauge.labels(name, report["version"]).set(report[key])
        settings = ctx.settings_for(name)
        await asyncio.to_thread(self.prune, name, settings.keep_versions)
        if not settings.auto_retrain:
            return
        # (the settings read above, not a second read of the model's overrides)
        policy, js = retrain_policy(settings), report["label_js_divergence"] if report else None
        state = await asyncio.to_thread(ctx.store.triggers.trigger_state, name)
        if policy.fires(state, js, time.time()) is None:
            return  # a read decides most polls; the locked write below only when it fires
        job = await asyncio.to_thread(
            ctx.store.triggers.maybe_trigger, name, policy, drift=js, owner_pid=os.getpid()
        )
        if job is None:
            return
        metrics.AUTO_RETRAINS.labels(name, job.request["trigger"]).inc()
        log.info("job %s of %s started by a trigger: %s", job.id, name, job.request["cause"])
        if ctx.embedded:  # else a `refit worker` claims it
            ctx.spawn(self.runner.run(job.id))

    def prune(self, name: str, keep: int) -> list[str]:
        """Delete `name`'s versions beyond the newest `keep` (never an aliased one), at most
        every PRUNE_EVERY_S per model in this worker (listing a registry is not free)."""
        now = time.monotonic()
        if keep <= 0 or now - self._pruned.get(name, -PRUNE_EVERY_S) < PRUNE_EVERY_S:
            return []
        self._pruned[name] = now
        try:
            removed = self.ctx.registry.prune(name, keep_last=keep)
        except (RegistryError, OSError) as exc:  # another worker removed one first, or away
            log.info("pruning %s: %s", name, exc)
            return []
        if removed:
            log.info("pruned %d old version(s) of %s: %s", len(removed), name, ", ".join(removed))
        return removed

    def judge_shadow(self, name: str) -> dict[str, Any] | None:
        """Promote `name`'s shadow once it is not worse than production on enough linked
        feedback (`REFIT_SHADOW_MIN_LABELED`), or drop it. Every worker of every replica
        may judge; the alias compare-and-set lets exactly one decision through."""
        ctx = self.ctx
        aliases = ctx.registry.aliases(name)
        production, shadow = aliases.get("production"), aliases.get("shadow")
        if not production or not shadow:
            return None
        report = ctx.store.telemetry.shadow_report(name, production, shadow)
        if report["labeled"] < ctx.settings_for(name).shadow_min_labeled:
            return None
        tolerance = ctx.settings_for(name).promotion_tolerance
        better = report["shadow_accuracy"] >= report["production_accuracy"] - tolerance
        if ctx.registry.end_shadow(name, shadow, promote=better, against=production) is None:
            return None  # decided elsewhere first
        decision = {
            "version": shadow,
            "against": production,
            "outcome": "promoted" if better else "dropped",
            "reason": f"live accuracy {report['shadow_accuracy']:.4f} vs production"
            f" {report['production_accuracy']:.4f} on the same {report['labeled']} labeled"
            f" predictions (tolerance {tolerance:g})",
            "report": report,
            "at": time.time(),
        }
        ctx.store.telemetry.record_shadow_decision(name, decision)
        metrics.SHADOW_DECISIONS.labels(name, decision["outcome"]).inc()
        log.info("shadow %s/%s %s: %s", name, shadow, decision["outcome"], decision["reason"])
        return decision

    def fleet_metrics(self) -> None:
        """Workers' heartbeats and each model's job history as gauges (see
        metrics.WORKER_HEARTBEAT_AGE)."""
        ctx = self.ctx
        now = time.time()
        forget = ctx.settings.worker_forget_s
        stale = []
        for worker in ctx.store.workers.list():
            age = now - float(worker["heartbeat_at"])
            if age > forget:  # aged out: its row goes, and its gauge with it
                stale.append(worker["id"])
                metrics.WORKER_HEARTBEAT_AGE.labels(worker["id"]).set(float("nan"))
            elif worker["state"] != "stopped":
                metrics.WORKER_HEARTBEAT_AGE.labels(worker["id"]).set(round(age, 1))
        if ctx.store.workers.forget(stale, silent_since=now - forget):
            log.info("aged out workers silent for over %.0f s: %s", forget, ", ".join(stale))
        for name in {ctx.settings.model_name, *ctx.store.aliases.models()}:
            self.job_metrics(name)

    def job_metrics(self, name: str) -> None:
        ctx = self.ctx
        jobs = ctx.store.jobs.list_jobs(name, limit=50)
        for state in ACTIVE_STATES:
            metrics.JOBS.labels(name, state).set(sum(j.state == state for j in jobs))
        finished = sorted(  # retrains only: a batch-scoring job trains on nothing
            (j for j in jobs if j.finished_at is not None and j.batch_id is not None),
            key=lambda j: -float(j.finished_at),
        )
        streak = 0
        for job in finished:
            if job.state not in (FAILED, INTERRUPTED):
                break
            streak += 1
        metrics.RETRAIN_FAILURES_IN_A_ROW.labels(name).set(streak)
        if finished and finished[0].started_at is not None:
            last = finished[0]
            metrics.RETRAIN_LAST_DURATION.labels(name, last.state).set(
                round(float(last.finished_at) - float(last.started_at), 1)
            )


def drift(ctx: Context, name: str | None = None, model: Any = None) -> dict[str, Any] | None:
    """The drift report of the version serving `name` here (default: the default model;
    None when it is not loaded in this worker)."""
    if name is None or ctx.is_default(name):
        model = ctx.holder.model
    if model is None:
        return None
    try:
        meta = ctx.registry.get(model.name, model.version).metadata
    except (RegistryError, LookupError):
        return None
    counts, confidence = ctx.store.telemetry.traffic(model.name, model.version)
    return drift_report(
        meta, counts, confidence, min_predictions=ctx.settings.drift_min_predictions
    )
