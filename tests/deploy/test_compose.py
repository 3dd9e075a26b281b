"""compose.yaml without a container engine (none runs on the CI machine): the single-node
default is untouched, the `cluster` profile is complete and consistent, and every file,
setting and address it names exists. The same haproxy.cfg and alerts.yml are exercised for
real in test_monitoring_and_lb.py; the image itself in `make test-container`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from service.settings import Settings
from tests.conftest import REPO

COMPOSE = yaml.safe_load((REPO / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def test_single_node_default_is_refit_and_prometheus_only() -> None:
    default = sorted(n for n, s in SERVICES.items() if "profiles" not in s)
    assert default == ["prometheus", "refit"]
    assert SERVICES["refit"]["volumes"] == ["refit-data:/data"]
    assert "REFIT_DATABASE_URL" not in SERVICES["refit"]["environment"]


def test_cluster_profile_has_every_part() -> None:
    cluster = {n for n, s in SERVICES.items() if "cluster" in s.get("profiles", [])}
    assert {
        "postgres",
        "seaweedfs",
        "refit-init",
        "refit-a",
        "refit-b",
        "refit-worker",
        "lb",
        "prometheus-cluster",
        "grafana",
    } <= cluster
    gpu = SERVICES["refit-worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["environment"]["REFIT_DEVICE"] == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    for name in ("refit-worker", "refit-worker-gpu"):
        assert SERVICES[name]["command"] == ["refit", "worker"]


def test_dependencies_exist_and_are_enabled_with_their_dependents() -> None:
    for name, service in SERVICES.items():
        profiles = set(service.get("profiles", []))
        for dep in service.get("depends_on", []):
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            theirs = set(SERVICES[dep].get("profiles", []))
            # a dependency is enabled whenever its dependent is (gpu runs with cluster)
            enabled_with = profiles | ({"cluster"} if "gpu" in profiles else set())
            assert not theirs or theirs & enabled_with, (name, dep)


def test_mounted_files_exist() -> None:
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"


def test_refit_variables_are_real_settings() -> None:
    known = {f"REFIT_{n.upper()}" for n in Settings.model_fields}
    for name, service in SERVICES.items():
        env = service.get("environment", {})
        unknown = {k for k in env if k.startswith("REFIT_") and k not in known}
        if name == "lb":
            continue  # haproxy's own variables
        assert unknown == set(), f"{name}: {unknown}"
    cluster_env = SERVICES["refit-a"]["environment"]
    assert cluster_env["REFIT_TRAINER"] == "external"
    assert cluster_env["REFIT_REGISTRY_URL"].startswith("s3://refit/")
    assert "@postgres:5432/" in cluster_env["REFIT_DATABASE_URL"]


def test_load_balancer_and_prometheus_point_at_the_replicas() -> None:
    cfg = (REPO / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    used = set(re.findall(r'"\$\{(\w+)\}"', cfg))
    assert used == set(SERVICES["lb"]["environment"])
    assert {"refit-a:3000", "refit-b:3000"} == {
        v for k, v in SERVICES["lb"]["environment"].items() if k != "REFIT_LB_BIND"
    }
    prom = yaml.safe_load((REPO / "deploy" / "prometheus" / "cluster.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["refit-a:3000", "refit-b:3000"]
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool missing: `make system-deps`")
    subprocess.run(
        [promtool, "check", "config", "cluster.yml"],
        cwd=REPO / "deploy" / "prometheus",
        check=True,
        capture_output=True,
    )


def test_grafana_provisioning_reaches_the_dashboard() -> None:
    grafana = SERVICES["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    provider = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/dashboards/refit.yml").read_text()
    )["providers"][0]
    dashboard_target = mounts["./deploy/grafana/refit-dashboard.json"]
    assert Path(dashboard_target).parent == Path(provider["options"]["path"])
    source = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert source["uid"] == "prometheus" and source["url"] == "${PROMETHEUS_URL}"
    assert grafana["environment"]["PROMETHEUS_URL"] == "http://prometheus-cluster:9090"
