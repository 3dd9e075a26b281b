"""The arrows of docs/architecture.md, checked on the source: `service → models ← training`,
the inference side never imports `training`, `bench/` and `tests/` share service/harness and
never import each other, and no module grows past ~450 lines (then it is two)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

# service modules that run training (the trainer process, `refit train`, the first start)
TRAINING_SIDE = {"trainer.py", "cli_train.py", "cli_backbones.py", "cli.py", "__main__.py"}


def imported(path: Path) -> set[str]:
    """Top-level package of every import in a file, at any depth (lazy imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def sources(folder: str) -> list[Path]:
    """The project's own modules (not a virtualenv a benchmark made inside bench/)."""
    return sorted(
        p
        for p in (REPO / folder).rglob("*.py")
        if not any(part.startswith(".") for part in p.relative_to(REPO).parts)
    )


def test_models_import_neither_service_nor_training() -> None:
    offenders = {p.name for p in sources("models") if imported(p) & {"service", "training"}}
    assert offenders == set()


def test_training_never_imports_service() -> None:
    assert {p.name for p in sources("training") if "service" in imported(p)} == set()


def test_inference_side_of_service_never_imports_training() -> None:
    offenders = {
        str(p.relative_to(REPO))
        for p in sources("service")
        if "training" in imported(p) and p.name not in TRAINING_SIDE
    }
    assert offenders == set()


def test_bench_and_tests_do_not_import_each_other() -> None:
    assert {p.name for p in sources("bench") if "tests" in imported(p)} == set()
    assert {p.name for p in sources("tests") if "bench" in imported(p)} == set()


def test_no_module_is_past_450_lines() -> None:
    long = {
        str(p.relative_to(REPO)): n
        for folder in ("service", "training", "models")
        for p in sources(folder)
        if "migrations" not in p.parts and (n := len(p.read_text().splitlines())) > 450
    }
    assert long == {}
