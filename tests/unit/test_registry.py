from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from models import (
    BackboneInfo,
    CorruptVersionError,
    DataSummary,
    InvalidModelNameError,
    Metrics,
    ModelMetadata,
    OnnxInfo,
    Registry,
    RegistryError,
    VersionNotFoundError,
)


def make_metadata(name: str, version: str) -> ModelMetadata:
    return ModelMetadata(
        name=name,
        version=version,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        labels=["a", "b"],
        backbone=BackboneInfo(name="tiny", sha256="0" * 64),
        strategy="feature_extraction",
        reason="test",
        data=DataSummary(
            count=4, per_class={"a": 2, "b": 2}, sha256="1" * 64, train_count=2, validation_count=2
        ),
        metrics=Metrics(accuracy=1.0, macro_f1=1.0, count=2),
        max_length=32,
        onnx=OnnxInfo(
            opset=17,
            inputs=["input_ids", "attention_mask"],
            outputs=["probabilities", "logits"],
            parity_max_abs_diff=0.0,
        ),
    )


def publish(registry: Registry, name: str = "m", payload: bytes = b"onnx") -> str:
    staging = registry.stage(name)
    (staging.path / "model.onnx").write_bytes(payload)
    (staging.path / "tokenizer.json").write_text("{}")
    return registry.publish(staging, make_metadata(name, staging.version)).version


def test_publish_then_get_roundtrips_metadata_and_hashes(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    version = publish(registry)
    mv = registry.get("m", version)
    assert mv.metadata.version == version
    assert set(mv.metadata.files) == {"model.onnx", "tokenizer.json"}
    assert mv.metadata.files["model.onnx"] == hashlib.sha256(b"onnx").hexdigest()
    on_disk = json.loads((mv.path / "metadata.json").read_text())
    assert on_disk["schema_version"] == 1
    assert registry.list_versions("m") == [version]
    assert registry.list_models() == ["m"]


def test_versions_are_unique_and_sorted_by_creation(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    versions = [publish(registry) for _ in range(5)]
    assert registry.list_versions("m") == versions
    assert len(set(versions)) == 5


def test_crash_before_rename_leaves_nothing_visible(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    staging = registry.stage("m")
    (staging.path / "model.onnx").write_bytes(b"half")
    # simulate a crash: the process dies before publish(); only the staging folder exists
    assert registry.list_versions("m") == []
    with pytest.raises(VersionNotFoundError):
        registry.get("m", staging.version)


def _killed_mid_publish(root: str) -> None:
    registry = Registry(root)
    staging = registry.stage("m")
    (staging.path / "model.onnx").write_bytes(b"x" * 1000)
    real_rename = os.rename

    def die(*args, **kwargs):  # the crash happens right before the atomic rename
        os._exit(9)

    os.rename = die
    try:
        registry.publish(staging, make_metadata("m", staging.version))
    finally:
        os.rename = real_rename


def test_process_killed_mid_publish_leaves_no_version(tmp_path: Path) -> None:
    proc = multiprocessing.get_context("fork").Process(
        target=_killed_mid_publish, args=(str(tmp_path),)
    )
    proc.start()
    proc.join(30)
    assert proc.exitcode == 9
    registry = Registry(tmp_path)
    assert registry.list_versions("m") == []
    (left,) = [p.name for p in (tmp_path / "m").iterdir() if p.name.startswith(".staging")]
    assert left.endswith(f".{proc.pid}")  # named by its owner, now dead
    assert registry.clean_staging("m") == [left]
    assert publish(registry)  # the registry still works afterwards


def test_clean_staging_never_touches_a_live_owner(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    mine = registry.stage("m")
    assert mine.path.name.endswith(f".{os.getpid()}")
    assert registry.clean_staging("m") == []
    assert mine.path.is_dir()


def test_fail_point_injects_a_full_disk_at_publish(tmp_path: Path, monkeypatch) -> None:
    faults = tmp_path / "faults"
    faults.write_text("publish:enospc")
    monkeypatch.setenv("REFIT_FAULTS_FILE", str(faults))
    registry = Registry(tmp_path / "home")
    with pytest.raises(OSError, match="No space left on device"):
        publish(registry)
    assert registry.list_versions("m") == []
    faults.write_text("training:pause")  # another point: publish goes through
    assert publish(registry) in registry.list_versions("m")


def _publish_many(root: str, n: int, queue) -> None:
    registry = Registry(root)
    queue.put([publish(registry, payload=os.urandom(64)) for _ in range(n)])


def test_concurrent_publishes_do_not_collide(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_publish_many, args=(str(tmp_path), 10, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [v for _ in procs for v in queue.get(timeout=60)]
    for p in procs:
        p.join(30)
    registry = Registry(tmp_path)
    assert len(results) == 40
    assert sorted(results) == registry.list_versions("m")
    for version in results:
        registry.verify("m", version)


def test_promote_and_rollback_move_aliases(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    v1, v2 = publish(registry), publish(registry)
    assert registry.promote("m", v1) == {"production": v1}
    assert registry.promote("m", v2) == {"production": v2, "previous": v1}
    assert registry.get("m").version == v2
    assert registry.rollback("m") == {"production": v1, "previous": v2}
    assert registry.get("m", "production").version == v1
    assert registry.rollback("m") == {"production": v2, "previous": v1}


def test_rollback_without_previous_is_refused(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.promote("m", publish(registry))
    with pytest.raises(RegistryError, match="no previous version to roll back to"):
        registry.rollback("m")


def test_promote_unknown_version_names_it(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish(registry)
    with pytest.raises(VersionNotFoundError, match="has no version 'v19990101-000000-000000-abcd'"):
        registry.promote("m", "v19990101-000000-000000-abcd")


def test_corrupted_file_is_detected_by_name(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    version = publish(registry)
    (tmp_path / "m" / version / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(CorruptVersionError, match=r"model.onnx: sha256 .* != recorded"):
        registry.verify("m", version)
    with pytest.raises(CorruptVersionError, match="model.onnx"):
        registry.promote("m", version)
    assert registry.aliases("m") == {}


def test_missing_file_and_broken_metadata_are_detected(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    v1, v2 = publish(registry), publish(registry)
    (tmp_path / "m" / v1 / "tokenizer.json").unlink()
    with pytest.raises(CorruptVersionError, match="tokenizer.json: missing"):
        registry.verify("m", v1)
    (tmp_path / "m" / v2 / "metadata.json").write_text('{"name": ')
    with pytest.raises(CorruptVersionError, match="metadata.json"):
        registry.get("m", v2)


def test_prune_keeps_last_n_and_aliased(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    versions = [publish(registry) for _ in range(5)]
    registry.promote("m", versions[0])
    removed = registry.prune("m", keep_last=2)
    assert removed == versions[1:3]
    assert registry.list_versions("m") == [versions[0], *versions[3:]]


def test_retention_never_prunes_a_shadow_or_canary_and_runs_once_per_period(
    tmp_path: Path,
) -> None:
    from types import SimpleNamespace

    from service.monitor import Monitor

    registry = Registry(tmp_path)
    versions = [publish(registry) for _ in range(7)]
    registry.promote("m", versions[2])
    registry.promote("m", versions[3])  # previous: versions[2]
    registry.shadow("m", versions[0])
    registry.shadow("m", versions[1], alias="canary")
    assert registry.aliases("m") == {
        "production": versions[3],
        "previous": versions[2],
        "shadow": versions[0],
        "canary": versions[1],
    }
    monitor = Monitor(SimpleNamespace(registry=registry), runner=None)
    assert monitor.prune("m", keep=0) == []  # the default: keep everything
    assert monitor.prune("m", keep=1) == [versions[4], versions[5]]
    assert registry.list_versions("m") == [*versions[:4], versions[6]]
    publish(registry)
    assert monitor.prune("m", keep=1) == []  # not again within PRUNE_EVERY_S
    # a promotion keeps the shadow and the canary (unless it promotes one of them)
    registry.promote("m", versions[1])
    assert registry.aliases("m") == {
        "production": versions[1],
        "previous": versions[3],
        "shadow": versions[0],
    }


def test_delete_refuses_aliased_version(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    v1, v2 = publish(registry), publish(registry)
    registry.promote("m", v1)
    with pytest.raises(RegistryError, match="aliased as 'production'"):
        registry.delete("m", v1)
    registry.delete("m", v2)
    assert registry.list_versions("m") == [v1]


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("", "must not be empty"),
        ("../x", r"must not contain '/', '\\' or '..'"),
        ("a/b", r"must not contain '/'"),
        ("x" * 65, "at most 64 characters"),
        (".hidden", "starting with a letter or digit"),
        ("sp ace", "use letters, digits"),
    ],
)
def test_invalid_model_names_name_the_rule(tmp_path: Path, name: str, rule: str) -> None:
    with pytest.raises(InvalidModelNameError, match=rule):
        Registry(tmp_path).stage(name)
