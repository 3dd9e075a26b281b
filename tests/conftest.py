from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from service.harness.data import (  # noqa: E402
    BANKING77,
    REPO,
    banking77_slice,
    read_banking77,
    read_shared,
    shared_dir,
)

__all__ = ["BANKING77", "REPO", "banking77_slice", "read_banking77", "read_shared", "shared_dir"]


@pytest.fixture(scope="session")
def ten_classes() -> list[str]:
    return sorted({label for _, label in read_banking77("train")})[:10]
