"""`refit backup` while the service takes writes, `refit restore` into a new home: the
restored service serves the same versions, with the same stored examples, jobs and
aliases as the snapshot; refused destinations and damaged backups are exit code 2."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from service.harness.server import make_server, production, submit, wait_job
from tests.conftest import REPO, banking77_slice, read_banking77

pytestmark = pytest.mark.slow
CLASSES = sorted({label for _, label in read_banking77("train")})


def refit(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "--home", str(home), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def snapshot(db_path: Path) -> tuple[int, list[str], tuple]:
    db = sqlite3.connect(db_path)
    try:
        examples = db.execute("SELECT COUNT(*) FROM examples").fetchone()[0]
        jobs = [r[0] for r in db.execute("SELECT id FROM jobs ORDER BY id")]
        aliases = db.execute(
            "SELECT production, previous FROM aliases WHERE model='default'"
        ).fetchone()
    finally:
        db.close()
    return examples, jobs, tuple(aliases)


def test_a_backup_taken_under_write_load_restores_into_a_new_home_that_serves_the_same(
    tmp_path: Path,
) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    source = make_server(tmp_path / "a", REFIT_AUTO_RETRAIN="false")
    source.start()
    stop, failures, accepted = threading.Event(), [], [0]
    try:
        with source.client() as client:
            rows = banking77_slice("train", CLASSES[40:45], per_class=8, seed=40)
            r = submit(
                client,
                {
                    "examples": [{"text": t, "label": y} for t, y in rows],
                    "strategy": "feature_extraction",
                    "promote": "always",
                },
            )
            assert r.status_code == 200, r.text
            job, _ = wait_job(client, r.headers["X-Refit-Job-Id"])
            assert job["state"] == "succeeded", job
            version = production(client)
        meta = json.loads((source.home / "default" / version / "metadata.json").read_text())
        labels = meta["labels"]

        def write_load() -> None:
            with source.client() as client:
                i = 0
                while not stop.is_set():
                    batch = [
                        {"text": f"backup load text {i} {j}", "label": labels[j % len(labels)]}
                        for j in range(10)
                    ]
                    r = client.post("/feedback", json={"examples": batch})
                    if r.status_code != 200:
                        failures.append(r.text)
                    else:
                        accepted[0] += r.json()["accepted"]
                    i += 1

        writer = threading.Thread(target=write_load)
        writer.start()
        while accepted[0] < 50 and writer.is_alive():
            stop.wait(0.1)
        before = accepted[0]
        out = refit(source.home, "backup", str(tmp_path / "backup"), "--json")
        after = accepted[0]
        stop.wait(0.5)
        stop.set()
        writer.join(60)
    finally:
        stop.set()
        source.stop()
    assert out.returncode == 0, out.stderr
    assert failures == [], failures[:3]  # writers never failed while the snapshot ran
    manifest = json.loads(out.stdout)
    assert set(manifest["versions"]["default"]) >= {version}
    examples, jobs, aliases = snapshot(tmp_path / "backup" / "refit.sqlite")
    assert after > before  # writes went on while the backup ran
    assert examples >= before and job["id"] in jobs
    assert aliases[0] == version

    # a busy destination or a non-empty home is refused; nothing is written
    busy = refit(source.home, "backup", str(tmp_path / "backup"))
    assert busy.returncode == 2 and "not empty" in busy.stderr
    refused = refit(source.home, "restore", str(tmp_path / "backup"))
    assert refused.returncode == 2 and "not empty" in refused.stderr

    target = make_server(tmp_path / "b", REFIT_AUTO_RETRAIN="false")
    target.home.mkdir()  # an empty mounted volume: filled in place
    restored = refit(target.home, "restore", str(tmp_path / "backup"))
    assert restored.returncode == 0, restored.stderr
    assert not list(target.home.glob(".partial-*"))
    target.start()
    try:
        with target.client() as client:
            assert production(client) == version
            r = client.post("/predict", json={"texts": ["where is my card?"]})
            assert r.status_code == 200 and r.json()["version"] == version
            assert {j["id"] for j in client.get("/jobs").json()["jobs"]} >= {job["id"]}
    finally:
        target.stop()
    assert snapshot(target.home / "refit.sqlite") == (examples, jobs, aliases)
    served = sorted(p.name for p in (target.home / "default").iterdir() if p.name.startswith("v"))
    assert served == sorted(manifest["versions"]["default"])


def test_a_damaged_backup_is_refused_and_leaves_the_home_empty(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text('{"format": 1, "database_sha256": "00"}')
    (tmp_path / "bad" / "refit.sqlite").write_bytes(b"not a database")
    out = refit(home, "restore", str(tmp_path / "bad"))
    assert out.returncode == 2 and "damaged" in out.stderr, out.stderr
    assert not home.exists() or not any(home.iterdir())
    missing = refit(home, "backup", str(tmp_path / "b2"))
    assert missing.returncode == 2 and "no store" in missing.stderr
    assert not (tmp_path / "b2").exists()
