"""What every `refit` command shares: output, exit codes, and the service's settings and
registry as the command line overrides them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from models import Registry

EXIT_BAD_INPUT = 2


def out(text: str) -> None:
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    sys.stderr.write(f"refit: {text}\n")


def settings_for(args: argparse.Namespace):
    """The service's settings (REFIT_* variables), with the command line's overrides: the
    CLI works on the same store and registry as the service."""
    from service.settings import Settings

    overrides: dict[str, Any] = {}
    if args.home:
        overrides["home"] = Path(args.home)
    if args.database_url:
        overrides["database_url"] = args.database_url
    if args.registry_url:
        overrides["registry_url"] = args.registry_url
    return Settings(**overrides)


def registry_for(args: argparse.Namespace) -> Registry:
    from service.state import open_state

    return open_state(settings_for(args))[1]
