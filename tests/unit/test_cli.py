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


def test_train_reads_a_goemotions_tsv_and_names_bad_lines(tmp_path: Path, capsys) -> None:
    from models.data import DataError
    from models.multilabel import read_label_id_tsv

    names = tmp_path / "labels.txt"
    names.write_text("joy\nanger\nneutral\n")
    data = tmp_path / "d.tsv"
    data.write_text("so happy\t0\tid1\nfurious and sad\t1,0\tid2\nok\t2\tid3\n")
    rows = read_label_id_tsv(data, names)
    assert rows == [
        ("so happy", ["joy"]),
        ("furious and sad", ["anger", "joy"]),
        ("ok", ["neutral"]),
    ]
    data.write_text("so happy\t0\tid1\nbad id\t7\tid2\n")
    try:
        read_label_id_tsv(data, names)
    except DataError as exc:
        assert (
            str(exc)
            == "d.tsv line 2: expected text<TAB>label ids (0..2, comma-separated), found ['7']"
        )
    else:
        raise AssertionError("a bad label id was read")
    assert main(["--home", str(tmp_path), "train", str(data)]) == 2
    assert "a .tsv holds label ids; name their file with --label-names" in capsys.readouterr().err
    assert main(["--home", str(tmp_path), "train", str(data), "--label-names", str(names)]) == 2
    assert "d.tsv line 2: expected text<TAB>label ids" in capsys.readouterr().err
