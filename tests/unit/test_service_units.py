from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from models import Metrics
from service.settings import Settings
from tests.conftest import REPO
from training.promotion import gate


def m(f1: float) -> Metrics:
    return Metrics(accuracy=f1, macro_f1=f1, count=10)


@pytest.mark.parametrize(
    ("promote", "challenger", "champion", "tolerance", "expected", "why"),
    [
        ("auto", 0.8, 0.8, 0.0, True, "challenger macro-F1 0.8000 >= champion 0.8000"),
        ("auto", 0.79, 0.8, 0.0, False, "kept as a candidate"),
        ("auto", 0.79, 0.8, 0.02, True, "- tolerance 0.02"),
        ("auto", 0.1, None, 0.0, True, "no production model yet"),
        ("never", 0.99, 0.1, 0.0, False, "promote=never"),
        ("always", 0.1, 0.99, 0.0, True, "promote=always"),
    ],
)
def test_promotion_gate(promote, challenger, champion, tolerance, expected, why) -> None:
    promoted, reason = gate(
        promote, m(challenger), m(champion) if champion is not None else None, tolerance
    )
    assert promoted is expected
    assert why in reason


def test_settings_refuse_unsafe_values(monkeypatch) -> None:
    monkeypatch.setenv("REFIT_API_TOKEN", "short")
    with pytest.raises(ValidationError, match="REFIT_API_TOKEN must be at least 8 characters"):
        Settings()
    monkeypatch.setenv("REFIT_API_TOKEN", "long-enough-token")
    monkeypatch.setenv("REFIT_MODEL_NAME", "../etc")
    with pytest.raises(ValidationError, match="must not contain"):
        Settings()
    monkeypatch.setenv("REFIT_MODEL_NAME", "ok")
    monkeypatch.setenv("REFIT_FINE_TUNING_AT", "8")
    with pytest.raises(
        ValidationError,
        match=r"REFIT_FINE_TUNING_AT \(8\) must be >= REFIT_FEATURE_EXTRACTION_BELOW \(16\)",
    ):
        Settings()
    monkeypatch.delenv("REFIT_FINE_TUNING_AT")
    settings = Settings()
    assert settings.api_token is not None and "long-enough-token" not in repr(settings)


def test_inference_side_never_imports_torch_or_transformers() -> None:
    code = (
        "import sys, service.app, service.loading, service.pool, service.middleware, service.stores;"
        "from models.data import parse_bytes; parse_bytes(b'text,label\\na,x\\nb,x\\nc,y\\nd,y\\n', 'csv');"
        "bad = [m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(("token", "warned"), [("", True), ("a-long-enough-token", False)])
def test_open_write_endpoints_are_warned_about_at_start(token: str, warned: bool, tmp_path) -> None:
    code = (
        "import logging; logging.basicConfig(level=logging.INFO);"
        "from service.app import warn_if_open; from service.settings import Settings;"
        "print(warn_if_open(Settings()))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFIT_")}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**env, "REFIT_API_TOKEN": token, "REFIT_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(warned)
    message = "REFIT_API_TOKEN is not set: retrain, promote, rollback, cancel and retry are open"
    assert (message in proc.stderr) is warned
    assert token == "" or token not in proc.stderr


def test_a_failing_predict_handler_is_answered_500_at_once_not_left_hanging() -> None:
    """The fast path's handler raising (issue 22: a tokenizer refusing a text) must still
    start a response: a generic JSON 500 with a request id, no traceback, no hang."""
    import asyncio
    import json

    from service.middleware import PredictFastPath

    async def broken(texts, top_k, model):
        raise TypeError("TextEncodeInput must be Union[...]")

    async def never_reached(scope, receive, send):
        raise AssertionError("a well-formed body must not take BentoML's path")

    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b'{"texts": ["x"]}', "more_body": False}

    async def send(message):
        sent.append(message)

    app = PredictFastPath(never_reached, handler=lambda: broken)
    scope = {"type": "http", "path": "/predict", "method": "POST", "query_string": b""}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=2))
    assert sent[0]["status"] == 500
    body = json.loads(sent[1]["body"])
    assert body["error"].startswith("internal error (request ") and "Traceback" not in body["error"]
