"""ASGI plumbing the middlewares share: typed callables, reading and replaying a bounded
body, answering JSON, and a bounds check on JSON nesting done before any parser runs."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_JSON_DEPTH = 32  # the deepest schema (retrain examples) needs 3
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a JSON (or NDJSON) body nests arrays/objects more than `limit` deep, found
    before any parser recurses into it: strings removed by one regex pass, then a running
    sum over the brackets in 1 MiB numpy chunks. Linear, C-speed, bounded memory."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    stripped = np.frombuffer(_JSON_STRING.sub(b"", body), dtype=np.uint8)
    depth = 0
    for start in range(0, stripped.size, 1 << 20):
        chunk = stripped[start : start + (1 << 20)]
        step = ((chunk == 0x5B) | (chunk == 0x7B)).astype(np.int32)
        step -= ((chunk == 0x5D) | (chunk == 0x7D)).astype(np.int32)
        running = np.cumsum(step) + depth
        if running.size and int(running.max()) > limit:
            return True
        depth = int(running[-1]) if running.size else depth
    return False


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class BodyTooLarge(Exception):
    pass


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None
