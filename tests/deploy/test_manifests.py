"""deploy/k8s: every manifest of both overlays, rendered, passes the Kubernetes schemas
(kubernetes-validate, strict: unknown fields fail) and checkov's policies (a finding is
either fixed or skipped with its reason in a `checkov.io/skip` annotation)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO

K8S = REPO / "deploy" / "k8s"
OVERLAYS = ["cpu", "gpu"]
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"


def _load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render(folder: Path) -> list[dict]:
    """What `kubectl kustomize` makes of the few features these kustomizations use:
    `resources` (files or folders), `images` (newName/newTag) and JSON 6902 `patches` with a
    kind/name target. Anything else fails loudly, so the layout stays this simple."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - {"apiVersion", "kind", "resources", "images", "patches"}
    assert not unknown, f"{folder}: kustomization uses {unknown}; extend render() first"
    docs: list[dict] = []
    for entry in spec.get("resources", []):
        path = folder / entry
        docs += render(path) if path.is_dir() else _load(path)
    docs = copy.deepcopy(docs)
    for image in spec.get("images", []):
        for container in _containers(docs):
            if container["image"].split(":")[0] == image["name"]:
                container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    for patch in spec.get("patches", []):
        target = patch["target"]
        ops = yaml.safe_load((folder / patch["path"]).read_text())
        matched = [
            d
            for d in docs
            if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]
        ]
        assert matched, f"patch {patch['path']} matches nothing"
        for d in matched:
            d.update(jsonpatch.apply_patch(d, ops))
    return docs


def _containers(docs: list[dict]) -> list[dict]:
    out = []
    for d in docs:
        pod = d.get("spec", {}).get("template", {}).get("spec", {})
        out += pod.get("containers", []) + pod.get("initContainers", [])
    return out


def _key(d: dict) -> tuple[str, str, str]:
    return d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(K8S / "overlays" / request.param)


def test_rendering_matches_kubectl_kustomize(rendered) -> None:
    overlay, docs = rendered
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the renderer is not cross-checked here")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    theirs = {_key(d): d for d in yaml.safe_load_all(out) if d}
    ours = {_key(d): d for d in docs}
    assert theirs.keys() == ours.keys()
    for key in ours:
        assert json.dumps(ours[key], sort_keys=True) == json.dumps(theirs[key], sort_keys=True), key


def test_every_manifest_passes_the_kubernetes_schemas(rendered) -> None:
    overlay, docs = rendered
    extras = [d for p in sorted((K8S / "extras").glob("*.yaml")) for d in _load(p)]
    version = kubernetes_validate.latest_version()
    kinds = set()
    for doc in docs + extras:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {_key(doc)}: {exc.message} at {list(exc.path)}")
        kinds.add(doc["kind"])
    assert {
        "Namespace",
        "ConfigMap",
        "ServiceAccount",
        "Job",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    } <= kinds


def test_what_the_issue_asks_of_the_pods(rendered) -> None:
    overlay, docs = rendered
    by = {_key(d)[2]: d for d in docs if d["kind"] in ("Deployment", "Job", "ConfigMap")}
    replica = by["refit-replica"]["spec"]["template"]["spec"]
    (c,) = replica["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    settings = by["refit-settings"]["data"]
    pause = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = int(settings["REFIT_GRACEFUL_SHUTDOWN_S"])
    assert replica["terminationGracePeriodSeconds"] == grace + pause
    assert settings["REFIT_TRAINER"] == "external"
    for d in docs:
        pod = d.get("spec", {}).get("template", {}).get("spec")
        if pod is None:
            continue
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts
    # secrets are referenced, never written here
    assert not [d for d in docs if d["kind"] == "Secret"]
    trainer = by["refit-trainer"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert trainer["command"] == ["refit", "worker"]
    if overlay == "gpu":
        assert trainer["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert env["REFIT_DEVICE"] == "cuda"
    else:
        assert "nvidia.com/gpu" not in trainer["resources"]["limits"]
        assert env["REFIT_DEVICE"] == "cpu"
    assert by["refit-db-upgrade"]["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "refit",
        "db",
        "upgrade",
    ]


def test_configmap_sets_only_real_settings(rendered) -> None:
    from service.settings import Settings

    _, docs = rendered
    data = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    known = {f"REFIT_{name.upper()}" for name in Settings.model_fields}
    refit = {k for k in data if k.startswith("REFIT_")}
    assert refit - known == set(), "unknown REFIT_* variables in the ConfigMap"
    Settings.model_validate(
        {k.removeprefix("REFIT_").lower(): v for k, v in data.items() if k in refit}
    )


def test_checkov_finds_nothing_unjustified(rendered, tmp_path: Path) -> None:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} missing: run `make checkov` (make test does)")
    overlay, docs = rendered
    folder = tmp_path / overlay
    folder.mkdir()
    for i, doc in enumerate(docs):
        (folder / f"{i:02d}-{doc['kind']}-{doc['metadata']['name']}.yaml").write_text(
            yaml.safe_dump(doc)
        )
    proc = subprocess.run(
        [
            str(CHECKOV),
            "-d",
            str(folder),
            "--framework",
            "kubernetes",
            "-o",
            "json",
            "--quiet",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [
        f"{c['check_id']} {c['resource']}: {c['check_name']}"
        for r in reports
        for c in r.get("results", {}).get("failed_checks", [])
    ]
    passed = sum(r.get("summary", {}).get("passed", 0) for r in reports)
    skipped = [c for r in reports for c in r.get("results", {}).get("skipped_checks", [])]
    assert failed == [], "\n".join(failed)
    assert passed > 50  # checkov really looked at the manifests
    assert all(c.get("suppress_comment") for c in skipped)  # each skip says why


if __name__ == "__main__":  # print an overlay as kubectl would apply it
    print(yaml.safe_dump_all(render(K8S / "overlays" / sys.argv[1])))
