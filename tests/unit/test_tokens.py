"""Scoped tokens: predict < label < admin, stored as sha256 digests in REFIT_API_TOKENS_FILE
and re-read when the file changes (rotation without a restart); 401 names the scope a
route needs, 403 the scope the token has. Run against the real admin app (TestClient)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from service import auth
from service.api import create_app
from service.auth import Tokens, parse_tokens, token_line
from service.cli import main as refit
from service.context import current
from service.settings import Settings

ADMIN, LABELER, PREDICTOR = "admin-token-1", "labeler-token-1", "predictor-token-1"


def write(path: Path, *lines: str) -> None:
    path.write_text("".join(line + "\n" for line in lines))


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    write(path, "# team tokens", token_line("label", LABELER), token_line("predict", PREDICTOR))
    return path


@pytest.fixture
def client(tokens_file: Path, monkeypatch) -> TestClient:
    monkeypatch.setattr(auth, "_RELOAD_S", 0.0)  # re-read at every request, not once a second
    auth._TOKENS.clear()
    app = create_app()
    settings = Settings(api_token=ADMIN, api_tokens_file=tokens_file)
    app.dependency_overrides[current] = lambda: SimpleNamespace(settings=settings)
    return TestClient(app, raise_server_exceptions=False)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_each_scope_reaches_its_routes_and_is_told_what_it_lacks(client: TestClient) -> None:
    promote = ("POST", "/models/m/promote")
    answer = ("POST", "/models/m/queue/answers")
    for token, allowed in ((ADMIN, {promote, answer}), (LABELER, {answer}), (PREDICTOR, set())):
        for method, path in (promote, answer):
            r = client.request(method, path, headers=bearer(token), json={})
            if (method, path) in allowed:
                assert r.status_code not in (401, 403), (token, path, r.text)
            else:
                assert r.status_code == 403, (token, path, r.text)
                needs = "admin" if (method, path) == promote else "label"
                assert r.json()["scope"] == needs and f"needs `{needs}`" in r.json()["error"]
    r = client.post("/models/m/promote", headers=bearer("nobody-has-this"), json={})
    assert r.status_code == 401 and r.json()["scope"] == "admin"


def test_a_token_added_or_removed_in_the_file_counts_at_once(
    client: TestClient, tokens_file: Path
) -> None:
    queue = "/models/m/queue"
    assert client.get(queue, headers=bearer(LABELER)).status_code not in (401, 403)
    write(tokens_file, token_line("label", "labeler-token-2"))  # rotated: the old one is gone
    assert client.get(queue, headers=bearer(LABELER)).status_code == 401
    assert client.get(queue, headers=bearer("labeler-token-2")).status_code not in (401, 403)
    tokens_file.unlink()  # an unreadable file leaves REFIT_API_TOKEN alone, never opens up
    assert client.get(queue, headers=bearer("labeler-token-2")).status_code == 401
    assert client.get(queue).status_code == 401
    assert client.get(queue, headers=bearer(ADMIN)).status_code not in (401, 403)


def test_the_file_holds_digests_only_and_bad_lines_are_skipped(tmp_path: Path, capsys) -> None:
    fresh = tmp_path / "fresh"
    assert refit(["token", "--scope", "admin", "--append", str(fresh)]) == 0
    assert oct(fresh.stat().st_mode & 0o777) == "0o600"  # created private
    capsys.readouterr()
    path = tmp_path / "tokens"
    path.write_bytes(b"# caf\xe9 tokens, not UTF-8, no newline at the end")
    note = ["--note", "ann\nadmin x"]
    assert refit(["token", "--scope", "label", "--append", str(path), *note]) == 0
    token = capsys.readouterr().out.split()[0]
    text = path.read_bytes().decode("utf-8", "replace")
    assert token not in text and len(text.splitlines()) == 2  # the note cannot add a line
    grants, problems = parse_tokens(text + "root abc\nadmin " + "z" * 64 + "\n")
    assert [g[0] for g in grants] == ["label"] and len(problems) == 2
    tokens = Tokens(None, path)
    assert tokens.scope(f"Bearer {token}") == "label"  # the comment's bad byte breaks nothing
    assert tokens.scope(f"Basic {token}") is None and tokens.scope(None) is None
    assert tokens.refusal("predict", None, predict_auth=False) is None
    assert tokens.refusal("predict", None, predict_auth=True).status == 401
