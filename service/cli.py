"""`refit`: train models and manage the registry from the command line.

Exit codes: 0 ok, 1 unexpected failure, 2 bad input (message on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from models import CorruptVersionError, Registry, RegistryError
from service.cli_backbones import add_backbones_command
from service.cli_common import EXIT_BAD_INPUT, err, out, registry_for, settings_for
from service.cli_predict import add_predict_command
from service.cli_train import add_train_command


def _version_row(
    registry: Registry, name: str, version: str, aliases: dict[str, str]
) -> dict[str, Any]:
    tags = [a for a, v in aliases.items() if v == version]
    try:
        meta = registry.get(name, version).metadata
    except CorruptVersionError as exc:
        return {"name": name, "version": version, "aliases": tags, "corrupt": str(exc)}
    return {
        "name": name,
        "version": version,
        "aliases": tags,
        "strategy": meta.strategy,
        "accuracy": meta.metrics.accuracy,
        "macro_f1": meta.metrics.macro_f1,
        "labels": len(meta.labels),
        "created_at": meta.created_at.isoformat(),
    }


def _verify(registry: Registry, args: argparse.Namespace) -> int:
    """Re-hash one version, or every version of the model(s); exit 1 if any is corrupt."""
    names = [args.name] if args.name else registry.list_models()
    targets = [
        (name, v)
        for name in names
        for v in ([args.version] if args.version else registry.list_versions(name))
    ]
    results = []
    for name, version in targets:
        try:
            mv = registry.verify(name, version)
        except CorruptVersionError as exc:
            results.append({"name": name, "version": version, "ok": False, "error": str(exc)})
            continue
        files = len(mv.metadata.files)
        results.append({"name": name, "version": mv.version, "ok": True, "files": files})
    for r in results:
        if args.json:
            continue
        if r["ok"]:
            out(f"{r['name']} {r['version']}: ok ({r['files']} files verified)")
        else:
            out(f"{r['name']} {r['version']}: CORRUPT: {r['error']}")
    if args.json:
        out(json.dumps(results))
    if not results:
        err(f"no model versions under {registry.root}")
    return 0 if results and all(r["ok"] for r in results) else EXIT_BAD_INPUT


def cmd_models(args: argparse.Namespace) -> int:
    registry = registry_for(args)
    try:
        if args.action == "list":
            names = [args.name] if args.name else registry.list_models()
            rows = []
            for name in names:
                aliases = registry.aliases(name)
                rows.extend(
                    _version_row(registry, name, v, aliases) for v in registry.list_versions(name)
                )
            if args.json:
                out(json.dumps(rows))
            elif not rows:
                out(f"no models under {registry.root}; train one with `refit train DATA`")
            else:
                for r in rows:
                    tag = f" [{', '.join(r['aliases'])}]" if r["aliases"] else ""
                    if "corrupt" in r:
                        out(f"{r['name']}  {r['version']}{tag}  CORRUPT: {r['corrupt']}")
                        continue
                    out(
                        f"{r['name']}  {r['version']}{tag}  {r['strategy']}  acc {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}"
                    )
        elif args.action == "show":
            meta = registry.get(args.name, args.version or "production").metadata
            out(meta.model_dump_json(indent=None if args.json else 2))
        elif args.action == "promote":
            if not args.version:
                err("promote needs a version: refit models promote NAME VERSION")
                return EXIT_BAD_INPUT
            aliases = registry.promote(args.name, args.version)
            out(
                json.dumps(aliases)
                if args.json
                else f"{args.name}: production is now {aliases['production']}"
            )
        elif args.action == "rollback":
            aliases = registry.rollback(args.name)
            out(
                json.dumps(aliases)
                if args.json
                else f"{args.name}: production is now {aliases['production']}"
            )
        elif args.action == "verify":
            return _verify(registry, args)
        elif args.action == "prune":
            removed = registry.prune(args.name, keep_last=args.keep)
            out(
                json.dumps(removed)
                if args.json
                else f"{args.name}: removed {len(removed)} version(s)"
                + (f": {', '.join(removed)}" if removed else "")
            )
    except (RegistryError, ValueError) as exc:
        if args.json:
            out(json.dumps({"ok": False, "error": str(exc)}))
        err(str(exc))
        return EXIT_BAD_INPUT
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    """Jobs from the service's store (`<home>/refit.sqlite`); works with the service down."""
    from service.state import open_store

    settings = settings_for(args)
    if settings.database_url is None and not settings.store_path.is_file():
        err(
            f"no job store at {settings.store_path}; start the service (make serve),"
            " pass --home or --database-url"
        )
        return EXIT_BAD_INPUT
    store = open_store(settings)
    if args.job_id:
        job = store.jobs.get_job(args.job_id)
        if job is None:
            err(f"no job {args.job_id!r}; list them with `refit jobs`")
            return EXIT_BAD_INPUT
        jobs = [job]
    else:
        jobs = store.jobs.list_jobs(limit=args.limit)
    if args.json:
        out(json.dumps([j.to_dict() for j in jobs] if not args.job_id else jobs[0].to_dict()))
        return 0
    if not jobs:
        out("no jobs yet")
    for job in jobs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created_at))
        line = f"{job.id}  {when}  {job.model}  {job.state:<11} {job.phase:<10} {100 * job.fraction:5.1f}%"
        if job.result and job.result.get("kind") == "batch":
            r = job.result
            line += f"  batch: {r['rows']} rows -> {r['output']} ({r['errors']} refused)"
        elif job.result:
            r = job.result
            line += f"  {r['strategy']} -> {r['version']} promoted={r['promoted']}"
        elif job.error:
            line += f"  {job.error}"
        elif job.message:
            line += f"  {job.message}"
        out(line)
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    """Schema migrations of the store (run by every service start too)."""
    from service.database import current_revision, head_revision, upgrade
    from service.state import open_store

    store = open_store(settings_for(args), migrate=False)
    if args.action == "current":
        current = current_revision(store.engine)
        out(f"{store.name}: revision {current or 'none'} (latest {head_revision()})")
        return 0 if current == head_revision() else 1
    before, after = upgrade(store.engine)
    out(f"{store.name}: {before or 'empty'} -> {after}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from service.worker import main as worker_main

    settings = settings_for(args)
    for key, value in (
        ("REFIT_HOME", str(settings.home)),
        ("REFIT_DATABASE_URL", settings.database_url),
        ("REFIT_REGISTRY_URL", settings.registry_url),
    ):
        if value:  # the trainer processes read the same settings
            os.environ[key] = value
    return worker_main()


def cmd_backup(args: argparse.Namespace) -> int:
    import sqlite3

    from service.backup import BackupError, backup, restore

    settings = settings_for(args)
    try:
        if args.command == "backup":
            manifest = backup(settings, Path(args.dest))
            done = f"backed up to {args.dest}"
        else:
            manifest = restore(settings, Path(args.src))
            done = f"restored {args.src} into {settings.root}"
    except BackupError as exc:
        err(str(exc))
        return EXIT_BAD_INPUT
    except (OSError, sqlite3.Error) as exc:  # permissions, disk full, a locked store
        err(f"{args.command} failed, nothing was written: {exc}")
        return EXIT_BAD_INPUT
    versions = sum(len(v) for v in manifest["versions"].values())
    out(
        json.dumps(manifest)
        if args.json
        else f"{done}: {len(manifest['versions'])} model(s), {versions} version(s)"
    )
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    import secrets

    from service.auth import token_line

    token = secrets.token_urlsafe(32)
    line = token_line(args.scope, token)
    if args.append:
        fd = os.open(args.append, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a+") as fh:
            fh.seek(max(0, os.fstat(fd).st_size - 1))
            if fh.read(1) not in ("", "\n"):
                fh.write("\n")  # never glue the new line onto the last one
            fh.write(
                f"{line}  # {' '.join((args.note or 'refit token').split())}, {time.strftime('%Y-%m-%d')}\n"
            )
    out(json.dumps({"token": token, "line": line}) if args.json else f"{token}\n{line}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refit", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--home", default=None, help="registry root (default: $REFIT_HOME or ./.refit)"
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="the service's store (default: $REFIT_DATABASE_URL or <home>/refit.sqlite)",
    )
    parser.add_argument(
        "--registry-url",
        default=None,
        help="the model registry: a folder or s3://BUCKET/PREFIX (default: $REFIT_REGISTRY_URL or <home>)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log progress details to stderr"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    add_train_command(sub)
    add_predict_command(sub)

    m = sub.add_parser(
        "models", help="list, show, promote, roll back, verify and prune model versions"
    )
    m.add_argument("action", choices=["list", "show", "promote", "rollback", "verify", "prune"])
    m.add_argument("name", nargs="?", default=None)
    m.add_argument(
        "version",
        nargs="?",
        default=None,
        help="a version id or alias (default: production; verify: every version)",
    )
    m.add_argument(
        "--keep",
        type=int,
        default=10,
        help="prune: newest versions kept (aliased versions are always kept)",
    )
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)

    j = sub.add_parser("jobs", help="retrain jobs of the service: phase, progress, result")
    j.add_argument("job_id", nargs="?", default=None)
    j.add_argument("--limit", type=int, default=20)
    j.add_argument("--json", action="store_true")
    j.set_defaults(func=cmd_jobs)

    d = sub.add_parser("db", help="store schema: upgrade to the latest revision, or show it")
    d.add_argument("action", choices=["upgrade", "current"])
    d.set_defaults(func=cmd_db)

    w = sub.add_parser(
        "worker", help="claim and run retrain jobs from the shared store (REFIT_TRAINER=external)"
    )
    w.set_defaults(func=cmd_worker)

    b = sub.add_parser(
        "backup",
        help="snapshot the single-node home (store + registry) into a new folder, while serving",
    )
    b.add_argument("dest", help="a new or empty folder")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_backup)
    r = sub.add_parser("restore", help="make a new, empty REFIT_HOME from a `refit backup` folder")
    r.add_argument("src")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_backup)

    t = sub.add_parser(
        "token",
        help="a new API token of a scope: prints it (once) and its REFIT_API_TOKENS_FILE line",
    )
    t.add_argument("--scope", choices=["predict", "label", "admin"], required=True)
    t.add_argument("--append", default=None, help="append the line to this tokens file")
    t.add_argument("--note", default=None, help="a comment stored with the line (who, what for)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_token)

    add_backbones_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "models" and args.action != "list" and not args.name:
        err(f"`refit models {args.action}` needs a model name")
        return EXIT_BAD_INPUT
    from pydantic import ValidationError

    from service.stores import StoreUnavailable

    try:
        return int(args.func(args))
    except ValidationError as exc:
        err(f"invalid settings:\n{exc}")
        return EXIT_BAD_INPUT
    except StoreUnavailable as exc:
        err(str(exc))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        err("interrupted; nothing was published")
        return 130


if __name__ == "__main__":
    sys.exit(main())
