"""Two real replicas on loopback behind the repo's own haproxy.cfg, scraped by a real
Prometheus that loads deploy/prometheus/alerts.yml; the dashboard's queries run against it.
A rolling restart (A drained with SIGTERM and started again, then B) under 16 clients
costs no request."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.conftest import REPO
from tests.e2e.conftest import Server, free_port, make_server, wait_until

PROMETHEUS = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "refit-dashboard.json"
BODY = json.dumps({"texts": ["I still have not received my new card"]}).encode()


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make system-deps` installs it (make test does)")
    return path


def test_alert_rules_check_and_pass_their_unit_tests() -> None:
    promtool = _binary("promtool")
    subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=PROMETHEUS, check=True)
    out = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    alerts = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    tests = (PROMETHEUS / "alerts_test.yml").read_text()
    for rule in alerts:  # every alert has a unit test that expects it to fire
        assert f"alertname: {rule['alert']}\n        exp_alerts:\n          - " in tests, rule


def _dashboard_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_dashboard_queries_parse_and_name_real_metrics(tmp_path: Path) -> None:
    from service import metrics

    families = {
        m._name for m in vars(metrics).values() if hasattr(m, "_name") and hasattr(m, "_type")
    }
    exposed = set()
    for name in families:
        exposed |= {name, f"{name}_total", f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    queries = _dashboard_queries()
    assert len(queries) >= 15
    for expr in queries:
        for used in re.findall(r"\b(refit_[a-z0-9_]+)", expr):
            assert used in exposed, f"dashboard uses {used}, which the service does not export"
    # promtool checks PromQL syntax of recording rules: one per dashboard query
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:q{i}", "expr": e.replace("$model", ".*")}
                    for i, e in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    subprocess.run([_binary("promtool"), "check", "rules", str(path)], check=True)


# -- two replicas, haproxy, Prometheus ----------------------------------------------------
@pytest.fixture(scope="module")
def replicas(tmp_path_factory) -> Iterator[tuple[Server, Server]]:
    tmp = tmp_path_factory.mktemp("fleet")
    common = {"REFIT_WORKERS": "1", "REFIT_AUTO_RETRAIN": "false", "REFIT_TRIGGER_POLL_S": "1"}
    a = make_server(tmp / "a", **common, REFIT_HOME=str(tmp / "home"))
    b = make_server(tmp / "b", **common, REFIT_HOME=str(tmp / "home"))
    for s in (a, b):
        s.home = tmp / "home"
        s.log_path.parent.mkdir(parents=True, exist_ok=True)
    a.start()  # trains the first model into the shared home; b finds it
    b.start()
    yield a, b
    for s in (a, b):
        s.stop()


@pytest.fixture(scope="module")
def prometheus(replicas, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = {
        # a timeout as long as the interval: a /metrics slow on a busy machine is late, not down
        "global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "2s"},
        "rule_files": [str(PROMETHEUS / "alerts.yml")],
        "scrape_configs": [
            {
                "job_name": "refit",
                "static_configs": [{"targets": [f"127.0.0.1:{s.port}" for s in replicas]}],
            }
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            _binary("prometheus"),
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("prometheus did not start:\n" + (tmp / "prometheus.log").read_text())
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _query(url: str, expr: str) -> list[dict]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert r["status"] == "success", (expr, r)
    return r["data"]["result"]


def test_prometheus_scrapes_both_replicas_loads_the_rules_and_runs_the_dashboard(
    replicas, prometheus
) -> None:
    for s in replicas:
        with s.client() as c:
            for _ in range(20):
                assert c.post("/predict", json={"texts": ["where is my card"]}).status_code == 200
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        targets = httpx.get(f"{prometheus}/api/v1/targets").json()["data"]["activeTargets"]
        served = _query(prometheus, "refit_model_info == 1")
        requests = _query(prometheus, "sum(refit_request_duration_seconds_count)")
        groups = httpx.get(f"{prometheus}/api/v1/rules").json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]  # health "unknown" until evaluated
        if (
            len(targets) == 2
            and all(t["health"] == "up" for t in targets)
            and len(served) == 2
            and requests
            and float(requests[0]["value"][1]) >= 40
            and len(rules) == 7
            and all(r["health"] == "ok" for r in rules)
        ):
            break
        time.sleep(1)
    else:
        pytest.fail(f"targets {targets}, served {served}, requests {requests}, rules {rules}")
    # both replicas serve the same version: the skew and no-replica alerts stay quiet
    assert {s["metric"]["version"] for s in served} == {served[0]["metric"]["version"]}
    # (pending is fine: a rule evaluated before the first scrape sees no series yet)
    alerts = httpx.get(f"{prometheus}/api/v1/alerts").json()["data"]["alerts"]
    quiet = ("RefitNoReadyReplica", "RefitVersionSkew")
    assert not [a for a in alerts if a["state"] == "firing" and a["labels"]["alertname"] in quiet]
    # request rate, latency, batch size, versions... have data already; a rate() needs two
    # scrapes after the requests, which a busy machine may not have taken yet: poll a while
    deadline = time.monotonic() + 180
    while True:
        empty = [
            expr
            for expr in _dashboard_queries()
            if not _query(prometheus, expr.replace("$model", ".*"))
        ]
        if len(_dashboard_queries()) - len(empty) >= 8 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(_dashboard_queries()) - len(empty) >= 8, empty


def _client(lb: str, stop: threading.Event, outcomes: Counter, workers: Counter) -> None:
    host, port = lb.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    while not stop.is_set():
        try:
            conn.request("POST", "/predict", BODY, {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            outcomes[r.status] += 1
            workers[r.getheader("X-Refit-Worker")] += 1
        except (OSError, http.client.HTTPException) as exc:
            outcomes[type(exc).__name__] += 1
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.close()


def test_rolling_restart_behind_haproxy_fails_no_request(replicas, tmp_path: Path) -> None:
    a, b = replicas
    lb = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "REFIT_LB_BIND": lb, "REFIT_A": f"127.0.0.1:{a.port}"}
    env["REFIT_B"] = f"127.0.0.1:{b.port}"
    cfg = REPO / "deploy" / "haproxy" / "haproxy.cfg"
    haproxy = _binary("haproxy")
    subprocess.run([haproxy, "-c", "-q", "-f", str(cfg)], env=env, check=True)
    log = (tmp_path / "haproxy.log").open("wb")
    proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], env=env, stdout=log, stderr=log)
    stop = threading.Event()
    outcomes: Counter = Counter()
    workers: Counter = Counter()
    threads = [
        threading.Thread(target=_client, args=(lb, stop, outcomes, workers)) for _ in range(16)
    ]

    def answers() -> bool:
        try:
            return httpx.post(f"http://{lb}/predict", content=BODY, timeout=10).status_code == 200
        except httpx.HTTPError:  # not listening yet, or no server up yet
            return False

    try:
        wait_until(answers, 120, "the balancer answers", step=0.5)  # first health checks
        for t in threads:
            t.start()
        before = set(workers)
        for replica in (a, b):
            replica.stop()  # SIGTERM: drain, exit
            replica.start()
            # `rise 2` health checks put it back in rotation: wait until it served through
            # the balancer before the other one goes down
            tree = psutil.Process(replica.proc.pid).children(recursive=True)
            mine = {str(p.pid) for p in tree} | {str(replica.proc.pid)}
            wait_until(lambda mine=mine: mine & set(workers), 120, "the restarted replica serves")
        served = outcomes[200]
        wait_until(lambda: outcomes[200] >= served + 50, 60, "more answers after the restarts")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        proc.terminate()
        proc.wait(10)
    total = sum(outcomes.values())
    assert outcomes[200] == total, f"{outcomes} (haproxy log: {tmp_path / 'haproxy.log'})"
    assert total > 200
    after = set(workers) - before
    assert len(after) >= 2, workers  # both restarted replicas (new worker pids) served again
