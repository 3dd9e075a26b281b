"""The request deadline (DeadlineMiddleware) as a plain ASGI app: real asyncio, a fake
inner app and server (the ASGI edge)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from service.middleware import DeadlineMiddleware

TIMEOUT = 0.3


def call(app, *, body_parts: list[bytes], pause: float = 0.0, method: str = "POST") -> list:
    sent: list[dict] = []
    parts = list(body_parts)

    async def receive():
        if pause:
            await asyncio.sleep(pause)
        chunk = parts.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(parts)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": "/predict", "method": method}
    guarded = DeadlineMiddleware(app, SimpleNamespace(request_timeout_s=TIMEOUT))
    asyncio.run(asyncio.wait_for(guarded(scope, receive, send), timeout=5))
    return sent


async def answer(send, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def test_a_handler_past_the_deadline_gets_503_and_is_cancelled() -> None:
    cancelled = []

    async def slow(scope, receive, send):
        await receive()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        await answer(send)

    sent = call(slow, body_parts=[b"{}"])
    assert sent[0]["status"] == 503 and cancelled == [True]
    headers = dict(sent[0]["headers"])
    assert headers[b"retry-after"] == b"5" and headers[b"connection"] == b"close"
    assert "REFIT_REQUEST_TIMEOUT_S" in json.loads(sent[1]["body"])["error"]


def test_a_body_that_trickles_past_the_deadline_gets_408() -> None:
    async def reads_all(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await answer(send)

    sent = call(reads_all, body_parts=[b"{", b'"a"', b":1}"], pause=0.2)
    assert sent[0]["status"] == 408
    assert "did not arrive within" in json.loads(sent[1]["body"])["error"]


def test_work_after_the_answer_is_not_cut_by_the_deadline() -> None:
    finished = []

    async def answers_then_works(scope, receive, send):
        await receive()
        await answer(send)
        await asyncio.sleep(2 * TIMEOUT)  # BentoML runs a submitted task here
        finished.append(True)

    sent = call(answers_then_works, body_parts=[b"{}"])
    assert [m.get("status") for m in sent] == [200, None] and finished == [True]


def test_the_apps_own_timeout_error_is_not_taken_for_the_deadline() -> None:
    async def raises(scope, receive, send):
        raise TimeoutError("upstream")

    with pytest.raises(TimeoutError, match="upstream"):
        call(raises, body_parts=[b"{}"])


def test_an_app_that_swallows_the_cancellation_is_still_answered_503() -> None:
    async def stubborn(scope, receive, send):
        await receive()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return  # swallowed: nothing sent

    sent = call(stubborn, body_parts=[b"{}"])
    assert sent[0]["status"] == 503
