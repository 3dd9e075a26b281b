"""Many named models in one service, loaded on demand within REFIT_MAX_LOADED_MODELS, and
the Open Inference Protocol V2 checked with Triton's own client (tritonclient[http])."""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import REPO, read_banking77, read_shared
from tests.e2e.conftest import TOKEN, Server, make_server, submit, wait_job


def _per_class(rows: list[tuple[str, str]], labels: set[str], n: int) -> list[tuple[str, str]]:
    rng = random.Random(0)
    out = []
    for label in sorted(labels):
        members = [r for r in rows if r[1] == label]
        rng.shuffle(members)
        out += members[:n]
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Iterator[tuple[Server, dict[str, set[str]], dict[str, str]]]:
    srv = make_server(tmp_path_factory.mktemp("models"), REFIT_MAX_LOADED_MODELS="2")
    srv.start()
    banking = read_banking77("train")
    all77 = {y for _, y in banking}
    six = set(sorted(all77)[:6])
    emotion = read_shared("emotion", "train")
    data = {
        "intents77": _per_class(banking, all77, 8),
        "intents6": _per_class(banking, six, 16),
        "binary": _per_class(emotion, {"joy", "sadness"}, 24),
    }
    versions: dict[str, str] = {}
    with srv.client() as c:
        for name, rows in data.items():
            body = {
                "model": name,
                "examples": [{"text": t, "label": y} for t, y in rows],
                "strategy": "feature_extraction",
            }
            r = submit(c, body)
            assert r.status_code == 200, r.text
            job, _ = wait_job(c, r.headers["X-Refit-Job-Id"], timeout=300)
            assert job["state"] == "succeeded" and job["model"] == name, job
            versions[name] = job["result"]["version"]
    labels = {name: {y for _, y in rows} for name, rows in data.items()}
    yield srv, labels, versions
    srv.stop()


def test_named_models_predict_and_list(models) -> None:
    srv, labels, versions = models
    with srv.client() as c:
        listed = c.get("/models").json()
        assert listed["model"] == "default"  # the single-model view is unchanged
        names = {m["name"]: m for m in listed["models"]}
        assert {"default", *labels} <= names.keys()
        for name in labels:
            assert names[name]["production"] == versions[name]
            r = c.post("/predict", json={"model": name, "texts": ["I am so happy today"]})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model"] == name and body["version"] == versions[name]
            # a banking model may answer a happy tweet out of scope: the top label is known
            assert body["predictions"][0]["label"] in {*labels[name], "out_of_scope"}
            assert body["predictions"][0]["top"][0]["label"] in labels[name]
            one = c.get(f"/models/{name}").json()
            assert one["production"] == versions[name] and one["default"] is False
        # no model: the default one, as before
        assert c.post("/predict", json={"texts": ["hi"]}).json()["model"] == "default"
        assert c.get("/models/nope").status_code == 404
        jobs = c.get("/jobs", params={"model": "binary"}).json()["jobs"]
        assert jobs and all(j["model"] == "binary" for j in jobs)


def test_tritonclient_speaks_v2_to_refit(models) -> None:
    srv, labels, versions = models
    client = triton.InferenceServerClient(url=srv.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("binary")
    assert not client.is_model_ready("no-such-model")
    meta = client.get_model_metadata("intents6")
    classes = meta["parameters"]["classes"]
    assert set(classes) == labels["intents6"] and meta["versions"] == [versions["intents6"]]
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    texts = ["I lost my card", "how do I activate my card", "what is the exchange rate"]
    for binary in (True, False):  # tritonclient's default binary tensors, and JSON
        text = triton.InferInput("text", [len(texts)], "BYTES")
        text.set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)
        result = client.infer("intents6", [text])
        got = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
        probs = result.as_numpy("probabilities")
        outside = result.as_numpy("out_of_scope")
        assert probs.shape == (3, 6) and probs.dtype == np.float32
        assert outside.shape == (3,) and outside.dtype == np.bool_
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
        assert got == [
            "out_of_scope" if o else classes[i]
            for i, o in zip(probs.argmax(axis=1), outside, strict=True)
        ]
        assert result.get_response()["model_version"] == versions["intents6"]
    with pytest.raises(InferenceServerException, match="does not exist"):
        client.infer("no-such-model", [text])
    client.close()


def test_v2_errors_say_what_is_wrong(models) -> None:
    srv, _, _ = models
    url = f"{srv.url}/v2/models/binary/infer"
    cases = [
        ({"inputs": [{"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}, "txt"),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, "BYTES"),
        ({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}, "shape"),
        ({"inputs": []}, "inputs"),
        (
            {
                "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
                "outputs": [{"name": "logits"}],
            },
            "unknown output",
        ),
    ]
    for body, words in cases:
        r = httpx.post(url, json=body, timeout=30)
        assert r.status_code == 400 and words in r.json()["error"], (body, r.text)
    r = httpx.post(url, content=b"{not json", timeout=30)
    assert r.status_code == 400 and "error" in r.json()


def test_a_version_in_the_path_serves_that_version(models) -> None:
    srv, labels, versions = models
    old = versions["binary"]
    rows = _per_class(read_shared("emotion", "train"), {"joy", "sadness"}, 30)
    with srv.client() as c:
        r = submit(
            c,
            {
                "model": "binary",
                "examples": [{"text": t, "label": y} for t, y in rows],
                "mode": "replace",
                "strategy": "feature_extraction",
                "promote": "always",
            },
        )
        before = {n: c.get(f"/models/{n}").json()["production"] for n in ("intents77", "intents6")}
        job, _ = wait_job(c, r.headers["X-Refit-Job-Id"], timeout=300)
        new = job["result"]["version"]
        assert new != old and c.get("/models/binary").json()["production"] == new
        # a retrain of one model never changes the others
        after = {n: c.get(f"/models/{n}").json()["production"] for n in ("intents77", "intents6")}
        assert after == before
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["yay"]}]}
    pinned = httpx.post(f"{srv.url}/v2/models/binary/versions/{old}/infer", json=body, timeout=60)
    assert pinned.status_code == 200 and pinned.json()["model_version"] == old
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # workers swap the new production within a poll
        latest = httpx.post(f"{srv.url}/v2/models/binary/infer", json=body, timeout=60).json()
        if latest["model_version"] == new:
            break
        time.sleep(0.3)
    assert latest["model_version"] == new
    versions["binary"] = new


def test_16_clients_across_three_models_beyond_the_loaded_budget(models) -> None:
    """REFIT_MAX_LOADED_MODELS=2 with the default model and three others: models load and
    unload all the time, yet no request fails and no answer comes from another model."""
    srv, labels, _ = models
    texts = [t for t, _ in read_banking77("test")[:200]]
    names = ["intents77", "intents6", "binary", None]
    stop = threading.Event()
    outcomes: Counter = Counter()
    wrong: list[str] = []

    def client(i: int) -> None:
        rng = random.Random(i)
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            while not stop.is_set():
                name = rng.choice(names)
                body: dict = {"texts": rng.sample(texts, rng.randint(1, 4))}
                if name:
                    body["model"] = name
                try:
                    r = c.post("/predict", json=body)
                except httpx.HTTPError as exc:
                    outcomes[type(exc).__name__] += 1
                    continue
                outcomes[r.status_code] += 1
                if r.status_code == 200:
                    got = r.json()
                    if name and (
                        got["model"] != name
                        or any(p["top"][0]["label"] not in labels[name] for p in got["predictions"])
                    ):
                        wrong.append(f"{name}: {got['model']} {got['predictions'][0]['label']}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    time.sleep(20)
    stop.set()
    for t in threads:
        t.join(60)
    assert outcomes[200] == sum(outcomes.values()) and outcomes[200] > 100, outcomes
    assert wrong == []
    metrics = httpx.get(f"{srv.url}/metrics").text
    unloads = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("refit_model_loads_total{") and 'event="unload"' in line
    )
    assert unloads > 0  # the budget was really exercised
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        pool = c.get("/models").json()["pool"]
        assert len(pool["loaded"]) <= 2 and pool["max_loaded"] == 2


def test_named_retrain_and_promote_need_the_token(models) -> None:
    srv, _, versions = models
    r = httpx.post(f"{srv.url}/models/binary/rollback", timeout=30)
    assert r.status_code == 401
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        r = c.post("/models/binary/promote", json={"version": versions["binary"]})
        assert r.status_code == 200 and r.json()["production"] == versions["binary"]


def test_kserve_sdk_rest_client_speaks_v2_to_refit(models) -> None:
    srv, labels, _ = models
    python = REPO / ".venv-kserve" / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} missing: run `make kserve-client` (make test does)")
    out = subprocess.run(
        [str(python), str(Path(__file__).with_name("kserve_probe.py")), srv.url, "intents6"]
        + ["I lost my card", "activate my card please"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert len(seen["labels"]) == 2
    assert set(seen["labels"]) <= {*labels["intents6"], "out_of_scope"}  # the answer
    assert seen["probabilities_shape"] == [2, 6]


def test_per_model_settings_are_stored_shown_and_used_by_the_next_retrain(models) -> None:
    srv, _, _ = models
    url = f"{srv.url}/models/intents6/settings"
    assert httpx.put(url, json={"fine_tuning_at": 500}, timeout=30).status_code == 401
    with srv.client() as c:
        bad = c.put(url, json={"feature_extraction_below": 900, "fine_tuning_at": 800})
        assert bad.status_code == 400 and "must not exceed" in bad.json()["error"]
        negative = c.put(url, json={"retrain_min_pending": -1})
        assert negative.status_code == 422 and "retrain_min_pending" in negative.json()["error"]
        unknown = c.put(url, json={"backbone": "mpnet"})  # not in this server's REFIT_BACKBONES
        assert unknown.status_code == 400
        assert unknown.json()["error"] == "unknown backbone 'mpnet'; allowed: minilm, auto"
        assert "refit backbones install mpnet" in unknown.json()["fix"]
        auto = c.put(url, json={"backbone": "auto", "max_p50_ms": 12.5})
        assert auto.status_code == 200, auto.text
        assert auto.json()["effective"]["backbone"] == "auto"
        assert auto.json()["effective"]["max_p50_ms"] == 12.5
        assert c.put(url, json={"backbone": None, "max_p50_ms": None}).json()["overrides"] == {}
        r = c.put(url, json={"feature_extraction_below": 900, "fine_tuning_at": 1000})
        assert r.status_code == 200, r.text
        shown = c.get("/models/intents6").json()["settings"]
        assert shown["overrides"] == {"feature_extraction_below": 900, "fine_tuning_at": 1000}
        assert shown["effective"]["promotion_tolerance"] == 0.0  # the REFIT_* value
        assert c.get("/models/binary").json()["settings"]["overrides"] == {}
        # auto with 16 per class: feature extraction, by this model's thresholds
        rows = _per_class(
            read_banking77("train"), set(sorted({y for _, y in read_banking77("train")})[:6]), 16
        )
        job_r = submit(
            c,
            {
                "model": "intents6",
                "examples": [{"text": t, "label": y} for t, y in rows],
                "mode": "replace",
            },
        )
        job, _ = wait_job(c, job_r.headers["X-Refit-Job-Id"], timeout=300)
        assert job["state"] == "succeeded", job
        version = job["result"]["version"]
        meta = c.get("/models/intents6").json()
        row = next(v for v in meta["versions"] if v["version"] == version)
        assert row["strategy"] == "feature_extraction"
        assert "< 900" in job["result"]["reason"], job["result"]["reason"]  # its thresholds
        # back to the service-wide values
        r = c.put(url, json={"feature_extraction_below": None, "fine_tuning_at": None})
        assert r.json()["overrides"] == {}


def test_deleting_a_model_removes_it_everywhere(models) -> None:
    """Last in this module: it deletes `binary`."""
    srv, _, _ = models
    assert httpx.delete(f"{srv.url}/models/binary", timeout=30).status_code == 401
    with srv.client() as c:
        assert c.delete("/models/default").status_code == 409  # the service's default model
        r = c.delete("/models/binary")
        assert r.status_code == 200, r.text
        assert r.json()["deleted_versions"] and r.json()["deleted_rows"]["examples"] > 0
        assert c.get("/models/binary").status_code == 404
        assert "binary" not in {m["name"] for m in c.get("/models").json()["models"]}
        assert c.get("/jobs", params={"model": "binary"}).json()["jobs"] == []
        deadline = time.monotonic() + 60  # every worker unloads it at its next poll
        statuses = set()
        while time.monotonic() < deadline:
            statuses = {
                c.post("/predict", json={"model": "binary", "texts": ["yay"]}).status_code
                for _ in range(6)
            }
            if statuses == {404}:
                break
            time.sleep(0.3)
        assert statuses == {404}
        assert c.delete("/models/binary").status_code == 404
        # the others are untouched
        assert c.post("/predict", json={"model": "intents6", "texts": ["hi"]}).status_code == 200
