"""`refit models prune`: retention from the command line, on the service's own registry
and aliases (the store in the home), never removing an aliased version."""

from __future__ import annotations

import json
from pathlib import Path

from service.cli import main
from service.settings import Settings
from service.state import open_state
from tests.unit.test_registry import publish


def test_models_prune_keeps_the_newest_and_every_aliased_version(tmp_path: Path, capsys) -> None:
    _, registry = open_state(Settings(home=tmp_path))
    versions = [publish(registry) for _ in range(5)]
    registry.promote("m", versions[0])
    code = main(["--home", str(tmp_path), "models", "prune", "m", "--keep", "2", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out) == versions[1:3]
    assert registry.list_versions("m") == [versions[0], *versions[3:]]
    assert main(["--home", str(tmp_path), "models", "prune", "m", "--keep", "0"]) == 2
    assert "keep_last must be >= 1, got 0" in capsys.readouterr().err
