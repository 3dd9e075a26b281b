"""In-process request batching: concurrent requests share one onnxruntime call."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from models._inference import Scored
from service.loading import LoadedModel, ModelHolder


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future


class MicroBatcher:
    """Gathers concurrent requests for up to `max_latency_ms` (or `max_texts`) and runs
    one onnxruntime call for all of them in a thread, against one model snapshot.

    A batch that is one request of at most `inline_chars` characters runs on the event
    loop instead: the thread hop (two thread wake-ups, ~0.1-0.5 ms) is most of what the
    service adds to a lone request. Requests that arrive meanwhile wait in the socket and
    come in together, so they still make one batch (in the thread). 0 turns it off
    (shadows: they answer nobody, so they never hold up the loop). The loop is held for
    that one graph run, so the limit keeps it short (~100 tokens)."""

    def __init__(
        self,
        holder: ModelHolder,
        *,
        max_texts: int,
        max_latency_ms: float,
        on_batch=None,
        inline_chars: int = 0,
    ) -> None:
        self.holder = holder
        self.max_texts = max_texts
        self.max_latency = max_latency_ms / 1000
        self.on_batch = on_batch
        self.inline_chars = inline_chars
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._last_requests = 0

    def close(self) -> None:
        """Stop the batch loop (an unloaded model: nothing is queued, nothing in flight)."""
        if self._task is not None:
            self._task.cancel()
        self._task, self._queue = None, None

    def _ensure_started(self) -> asyncio.Queue[_Pending]:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self._queue

    async def submit(self, texts: list[str]) -> tuple[LoadedModel, Scored]:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._ensure_started().put(_Pending(texts, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            size = len(first.texts)
            # Wait for company only when the last batch had some: a lone client (concurrency 1)
            # is never delayed; under load, requests also queue up while a batch runs.
            wait = self.max_latency if self._last_requests > 1 else 0.0
            deadline = loop.time() + wait
            while size < self.max_texts:
                if not self._queue.empty():
                    item = self._queue.get_nowait()
                    batch.append(item)
                    size += len(item.texts)
                    continue
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout)
                except TimeoutError:
                    break
                batch.append(item)
                size += len(item.texts)
            self._last_requests = len(batch)
            await self._infer(batch, size)

    async def _infer(self, batch: list[_Pending], size: int) -> None:
        model = self.holder.model
        if model is None:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(RuntimeError("no model loaded"))
            return
        texts = [t for item in batch for t in item.texts]
        started = time.perf_counter()
        try:
            if len(batch) == 1 and 0 < sum(map(len, texts)) <= self.inline_chars:
                scored = model.score(texts)  # a lone small request: no thread hop
            else:
                scored = await asyncio.to_thread(model.score, texts)
        except Exception as exc:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(model, size, time.perf_counter() - started)
        offset = 0
        for item in batch:
            n = len(item.texts)
            if not item.future.done():
                item.future.set_result((model, scored.rows(offset, offset + n)))
            offset += n
