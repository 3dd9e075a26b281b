"""`POST /models/{name}/batch` on the real service: a job scores a file under
REFIT_BATCH_ROOT with the pinned version, bad rows go to the errors file, a trainer
SIGKILLed mid-file leaves an interrupted job whose retry resumes from the finished chunks,
and paths outside the root, unknown versions or formats are 4xx with the reason."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import psutil

from tests.conftest import read_banking77
from tests.e2e.conftest import production, wait_job, wait_until


def _root(server) -> Path:
    return Path(server.env["REFIT_BATCH_ROOT"])


def _trainer(server, job_id: str) -> psutil.Process | None:
    for p in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if job_id in " ".join(p.cmdline()) and "service.trainer" in " ".join(p.cmdline()):
                return p
        except psutil.Error:
            continue
    return None


def test_a_batch_job_scores_a_file_and_a_killed_one_resumes_on_retry(server) -> None:
    texts = [t for t, _ in read_banking77("test")][:1500]
    folder = _root(server) / "in"
    folder.mkdir(exist_ok=True)
    lines = [json.dumps({"id": f"t{i}", "text": t}) for i, t in enumerate(texts)]
    lines[7] = json.dumps({"id": "x", "text": "  "})
    (folder / "rows.jsonl").write_text("\n".join(lines) + "\n")
    with server.client() as c:
        version = production(c)
        r = c.post("/models/default/batch", json={"input": "in/rows.jsonl", "chunk_rows": 25})
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["request"]["version"] == version  # pinned when queued
        assert job["request"]["output"] == "in/rows.predictions.jsonl"
        parts = folder / "rows.predictions.jsonl.parts"
        wait_until(lambda: len(list(parts.glob("*.out"))) >= 2, 120, "two finished chunks")
        trainer = wait_until(lambda: _trainer(server, job["id"]), 30, "the job's process")
        trainer.send_signal(signal.SIGKILL)
        killed, _ = wait_job(c, job["id"], timeout=60)
        assert killed["state"] == "interrupted", killed
        finished = len(list(parts.glob("*.out")))
        assert not (folder / "rows.predictions.jsonl").exists()  # nothing half-written

        r = c.post(f"/jobs/{job['id']}/retry")
        assert r.status_code == 202, r.text
        done, seen = wait_job(c, r.json()["id"], timeout=600)
        assert done["state"] == "succeeded", done
        result = done["result"]
        assert result["kind"] == "batch" and result["scored_version"] == version
        assert result["rows"] == 1500 and result["errors"] == 1
        assert result["resumed_chunks"] >= finished  # the finished chunks were not re-scored
        # chunk 0 (with the bad row) finished first: only the other chunks were scored again
        assert result["scored"] == 1500 - 25 * result["resumed_chunks"]
        out = [json.loads(x) for x in (folder / "rows.predictions.jsonl").read_text().splitlines()]
        assert [row["id"] for row in out] == [f"t{i}" for i in range(1500) if i != 7]
        assert {"label", "score", "out_of_scope", "top"} <= set(out[0])
        errors = (folder / "rows.predictions.jsonl.errors.jsonl").read_text().splitlines()
        assert [json.loads(e)["row"] for e in errors] == [8]
        assert result["output"] == "in/rows.predictions.jsonl" and not parts.exists()
        assert any(phase == "scoring" for phase, _ in seen)
    # it trained on nothing: the model's pending feedback is not taken as consumed by it
    db = sqlite3.connect(server.home / "refit.sqlite")
    try:
        rows = db.execute(
            "SELECT batch_id FROM jobs WHERE id IN (?, ?)", (job["id"], done["id"])
        ).fetchall()
    finally:
        db.close()
    assert rows == [(None,), (None,)]


def test_bad_batch_requests_say_what_is_wrong(server) -> None:
    (_root(server) / "ok.csv").write_text("text\nhello\n")
    with server.client() as c:
        for body, status, says in [
            ({"input": "../outside.csv"}, 400, "outside REFIT_BATCH_ROOT"),
            ({"input": "/etc/passwd"}, 400, "outside REFIT_BATCH_ROOT"),
            ({"input": "ok.csv", "output": "../../x.jsonl"}, 400, "outside REFIT_BATCH_ROOT"),
            ({"input": "s3://bucket/rows.csv"}, 400, "s3:// inputs are not supported yet"),
            ({"input": "missing.csv"}, 400, "no file 'missing.csv' under REFIT_BATCH_ROOT"),
            ({"input": "a\u0000b.csv"}, 400, "is not a usable path"),
            ({"input": "x" * 300 + ".csv"}, 400, "is not a usable path"),
            ({"input": "ok.csv", "output": "./ok.csv"}, 400, "would overwrite the input"),
            ({"input": "ok.txt"}, 400, "cannot tell the format"),
            ({"input": "ok.csv", "version": "v20200101-000000-000000-abcd"}, 404, "no version"),
            ({"input": "ok.csv", "on_error": "ignore"}, 422, "on_error"),
            ({"input": "ok.csv", "chunk_rows": 0}, 422, "chunk_rows"),
        ]:
            r = c.post("/models/default/batch", json=body)
            assert r.status_code == status, (body, r.text)
            assert says is None or says in r.json()["error"], (body, r.text)
        assert c.post("/models/nope/batch", json={"input": "ok.csv"}).status_code == 404
    with server.client(token=None) as anonymous:
        assert anonymous.post("/models/default/batch", json={"input": "ok.csv"}).status_code == 401
