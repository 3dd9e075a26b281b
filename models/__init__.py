"""The model contract: artifact metadata and the versioned registry (no torch here)."""

from __future__ import annotations

from models._errors import (
    CorruptVersionError,
    InvalidModelNameError,
    RegistryError,
    RegistryUnavailable,
    VersionNotFoundError,
)
from models._faults import failpoint
from models._metadata import (
    SCHEMA_VERSION,
    BackboneInfo,
    Calibration,
    ClassMetrics,
    DataSummary,
    HalfPrecisionReport,
    Metrics,
    ModelMetadata,
    MultiLabel,
    OnnxInfo,
    OutOfScope,
    OutOfScopeEvidence,
    QuantizationReport,
)
from models._registry import Registry, pid_alive
from models._storage import (
    AliasStore,
    FileAliases,
    LocalStorage,
    ModelVersion,
    Staging,
    default_home,
    sha256_file,
    validate_model_name,
)

__all__ = [
    "AliasStore",
    "FileAliases",
    "LocalStorage",
    "RegistryUnavailable",
    "SCHEMA_VERSION",
    "BackboneInfo",
    "Calibration",
    "OutOfScope",
    "OutOfScopeEvidence",
    "ClassMetrics",
    "CorruptVersionError",
    "DataSummary",
    "InvalidModelNameError",
    "Metrics",
    "ModelMetadata",
    "MultiLabel",
    "ModelVersion",
    "OnnxInfo",
    "HalfPrecisionReport",
    "QuantizationReport",
    "Registry",
    "Staging",
    "RegistryError",
    "VersionNotFoundError",
    "default_home",
    "failpoint",
    "pid_alive",
    "sha256_file",
    "validate_model_name",
]
