from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from models._inference import Scored
from service.batcher import MicroBatcher


@dataclass
class RecordingModel:
    """A test double for LoadedModel: probability 1 on the text's length mod 3."""

    version: str = "v1"
    calls: list[int] = field(default_factory=list)
    delay: float = 0.0

    threads: list[int] = field(default_factory=list)  # the thread of each call

    def score(self, texts):
        self.calls.append(len(texts))
        self.threads.append(threading.get_ident())
        time.sleep(self.delay)
        out = np.zeros((len(texts), 3), dtype=np.float32)
        out[np.arange(len(texts)), [len(t) % 3 for t in texts]] = 1.0
        return Scored(out, np.asarray([t.startswith("?") for t in texts]))


class Holder:
    def __init__(self, model) -> None:
        self._model = model
        self._lock = threading.Lock()

    @property
    def model(self):
        with self._lock:
            return self._model

    def swap(self, model) -> None:
        with self._lock:
            self._model = model


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_one_call_and_keep_their_order() -> None:
    model = RecordingModel(delay=0.05)
    batcher = MicroBatcher(Holder(model), max_texts=64, max_latency_ms=5)

    async def go():
        first = asyncio.create_task(batcher.submit(["warm"]))  # occupies the runner
        await asyncio.sleep(0.01)
        texts = [["a", "bb"], ["ccc"], ["dddd", "e", "ff"]]
        results = await asyncio.gather(*(batcher.submit(t) for t in texts))
        await first
        return texts, results

    texts, results = run(go())
    assert model.calls == [1, 6]  # the three requests queued during the first call: one call
    for sent, (served, scored) in zip(texts, results, strict=True):
        assert served is model
        assert scored.probabilities.argmax(axis=1).tolist() == [len(t) % 3 for t in sent]


def test_a_lone_client_is_not_delayed() -> None:
    batcher = MicroBatcher(Holder(RecordingModel()), max_texts=64, max_latency_ms=5000)

    async def go():
        start = time.perf_counter()
        await batcher.submit(["x"])
        await batcher.submit(["y"])
        return time.perf_counter() - start

    assert run(go()) < 2.5  # two sequential requests, no 5 s batching wait each


def test_one_batch_one_version_across_a_swap() -> None:
    old, new = RecordingModel("v1", delay=0.05), RecordingModel("v2")
    holder = Holder(old)
    batcher = MicroBatcher(holder, max_texts=64, max_latency_ms=5)

    async def go():
        first = asyncio.create_task(batcher.submit(["a"]))
        await asyncio.sleep(0.01)
        holder.swap(new)
        second = await batcher.submit(["b", "c"])
        return await first, second

    (m1, _), (m2, p2) = run(go())
    assert (m1.version, m2.version) == ("v1", "v2")
    assert p2.probabilities.shape == (2, 3)
    assert p2.out_of_scope.tolist() == [False, False]


def test_a_lone_small_request_is_scored_inline_and_anything_else_in_the_thread() -> None:
    """Inline when the batch is one request with short texts; a long text, or requests
    that come in together, go to the thread (batching under load is kept)."""
    model = RecordingModel(delay=0.05)
    batcher = MicroBatcher(Holder(model), max_texts=64, max_latency_ms=5, inline_chars=10)

    async def go():
        await batcher.submit(["short"])  # alone: inline
        await batcher.submit(["x" * 11])  # over inline_chars: the thread
        await asyncio.gather(*(batcher.submit([t]) for t in ("a", "b", "c", "d")))  # together
        await batcher.submit(["e"])
        return threading.get_ident()

    loop_thread = run(asyncio.wait_for(go(), 10))
    assert model.calls == [1, 1, 4, 1]
    assert [t == loop_thread for t in model.threads] == [True, False, False, True]


def test_inline_scoring_is_off_at_zero_and_reports_no_model_and_failures() -> None:
    model = RecordingModel()

    async def go():
        off = MicroBatcher(Holder(model), max_texts=64, max_latency_ms=5)  # inline_chars=0
        await off.submit(["a"])
        holder = Holder(None)
        inline = MicroBatcher(holder, max_texts=64, max_latency_ms=5, inline_chars=100)
        with pytest.raises(RuntimeError, match="no model loaded"):
            await inline.submit(["a"])

        class Failing(RecordingModel):
            def score(self, texts):
                raise ValueError("bad text")

        holder.swap(Failing())
        with pytest.raises(ValueError, match="bad text"):
            await inline.submit(["a"])
        return threading.get_ident()

    assert run(asyncio.wait_for(go(), 10)) not in model.threads
