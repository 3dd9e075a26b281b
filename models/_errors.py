from __future__ import annotations


class RegistryError(Exception):
    """Base class for registry errors; the message says what was expected and how to fix it."""


class InvalidModelNameError(RegistryError, ValueError):
    def __init__(self, name: str, rule: str) -> None:
        self.name = name
        self.rule = rule
        super().__init__(f"invalid model name {name!r}: {rule}")


class VersionNotFoundError(RegistryError, LookupError):
    def __init__(self, name: str, version: str, available: list[str]) -> None:
        self.name = name
        self.version = version
        self.available = available
        shown = ", ".join(available[-5:]) if available else "none"
        super().__init__(
            f"model {name!r} has no version {version!r} (latest versions: {shown}); "
            "run `refit models list` to see them"
        )


class CorruptVersionError(RegistryError):
    def __init__(self, name: str, version: str, file: str, problem: str) -> None:
        self.name = name
        self.version = version
        self.file = file
        self.problem = problem
        super().__init__(
            f"model {name!r} version {version!r} is corrupt: {file}: {problem}; "
            "delete it or roll back to a good version"
        )


class RegistryUnavailable(RegistryError):
    """The shared registry (object storage) could not be reached; retry later."""
