"""BentoML's own path: `bentoml build` on bentofile.yaml makes a Bento whose copy of the
service imports and declares the API, with every source file and migration inside."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import REPO


def test_bento_requirements_are_pyprojects() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    expected = project["dependencies"] + extras["cpu"] + extras["train"] + extras["cluster"]
    lines = (REPO / "deploy" / "bento-requirements.txt").read_text().splitlines()
    assert [x for x in lines if x and not x.startswith("#")] == expected


def test_bentoml_build_makes_a_bento_whose_service_imports(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "1"}
    env["REFIT_HOME"] = str(tmp_path / "home")
    bentoml = [sys.executable, "-m", "bentoml"]
    out = subprocess.run(
        [*bentoml, "build", "--output", "tag"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("refit:")
    bento = tmp_path / "bentoml" / "bentos" / "refit" / tag.split(":")[1]
    src = bento / "src"
    tracked = subprocess.run(
        ["git", "ls-files", "service", "models", "training"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    missing = [f for f in tracked if not (src / f).exists()]
    assert missing == [], f"files the service needs are not in the Bento: {missing}"
    assert not (src / "tests").exists()
    # the Bento's own copy (not this checkout) loads as a BentoML service
    probe = (
        "import bentoml, service.app as app, sys;"
        f"svc = bentoml.load({str(bento)!r});"
        "print(svc.name, sorted(svc.apis), app.__file__)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    name, *rest = loaded.stdout.split()
    assert name == "refit"
    assert "'predict'," in loaded.stdout and rest[-1].startswith(str(src))
