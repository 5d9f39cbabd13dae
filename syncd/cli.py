"""``syncd``: the central server and its operator commands.

Exit codes: 0 success; 1 setup problem; 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import getpass
import io
import json
import logging
import os
import re
import signal
import sqlite3
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from protocol import STATUSES

from .accounts import ROLES, add_user
from .app import REQUESTS, Ingest, make_app
from .central import change_status
from .config import ServerConfig, ServerPaths, default_data_dir
from .documents import DocumentStore
from .dvcqg import export_dvcqg
from .enrollment import create_token, revoke_agent
from .errors import RequestError, SetupError, SyncdError
from .keys import ServerKeys
from .observability import json_log_handler
from .published import publish_catalogue
from .report import COLUMNS, on_time_report, total_row
from .sneakernet import BundleRefused, bundle_files, import_folder
from .store import Store, is_postgres_url, open_store
from .tls import server_ssl_context

__all__ = ["main"]

log = logging.getLogger("syncd")
_COMMUNE = re.compile(r"\d{5}")
_SHUTDOWN_GRACE_S = 60.0  # the longest a batch body may take at the slowest allowed pace


def _db_url(args: argparse.Namespace) -> str | None:
    url: str | None = args.db or os.environ.get("SYNCD_DB") or None
    if url is not None and not is_postgres_url(url):
        raise SetupError("--db must be a postgresql://… URL (without it: the SQLite database "
                         "in the data directory)")
    return url


async def _open_store(paths: ServerPaths, url: str | None) -> tuple[ServerConfig, Store]:
    config = ServerConfig.load(paths)
    if url is None and not paths.database.exists():
        raise SetupError(f"database {paths.database.name} is missing in {paths.root}")
    return config, await open_store(paths.database, url)


async def _with_store(args: argparse.Namespace,
                      work: Callable[[ServerConfig, Store], Coroutine[Any, Any, int]]
                      ) -> int:
    config, store = await _open_store(ServerPaths(args.data_dir), _db_url(args))
    try:
        return await work(config, store)
    finally:
        await store.close()


async def cmd_init(args: argparse.Namespace) -> int:
    paths = ServerPaths(args.data_dir)
    url = _db_url(args)
    if paths.config.exists():
        if url is not None:  # a copy of the data directory for another process: migrate
            await (await open_store(paths.database, url)).close()
        print(f"{paths.root} is already initialised; nothing changed.", file=sys.stderr)
        return 0
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    ServerKeys.create(paths.root)
    store = await open_store(paths.database, url)
    await store.close()
    tmp = paths.config.with_suffix(".tmp")
    tmp.write_text(ServerConfig().to_json(), encoding="utf-8")
    os.replace(tmp, paths.config)
    print(f"Initialised syncd data directory {paths.root}", file=sys.stderr)
    return 0


async def cmd_serve(args: argparse.Namespace) -> int:
    paths = ServerPaths(args.data_dir)
    keys = ServerKeys.load(paths.root)
    ssl_context = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SetupError("--tls-cert and --tls-key go together")
        ssl_context = server_ssl_context(args.tls_cert, args.tls_key)
    config, store = await _open_store(paths, _db_url(args))
    app = make_app(config, store, keys, paths.root / "documents")
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=30)
    try:
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port, reuse_address=True,
                           ssl_context=ssl_context)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Windows event loops have no signal handlers; Ctrl-C still stops serve.
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        port = site._server.sockets[0].getsockname()[1] if site._server else args.port  # type: ignore[union-attr]
        scheme = "https" if ssl_context else "http"
        print(f"syncd listening on {scheme}://{args.host}:{port}", flush=True)
        await stop.wait()
        # Stop listening, then let requests in flight finish, bodies included (a
        # 2G upload takes most of a request's life), before connections close.
        await site.stop()
        log.info("shutting down; finishing requests in flight (%d)", app[REQUESTS].count)
        if not await app[REQUESTS].wait_idle(_SHUTDOWN_GRACE_S):
            log.warning("requests still in flight after %.0f s; closing them",
                        _SHUTDOWN_GRACE_S)
    finally:
        await runner.cleanup()
        await store.close()
    return 0


async def cmd_enroll(args: argparse.Namespace) -> int:
    if not _COMMUNE.fullmatch(args.commune):
        print("--commune must be a 5-digit commune code", file=sys.stderr)
        return 2

    keys = ServerKeys.load(ServerPaths(args.data_dir).root)
    if args.expires_hours is not None and not 0 < args.expires_hours <= 24 * 365:
        print("--expires-hours must be between 0 and 8760", file=sys.stderr)
        return 2

    async def work(config: ServerConfig, store: Store) -> int:
        ttl = config.token_ttl_hours if args.expires_hours is None else args.expires_hours
        print(await create_token(store, args.commune, args.name, ttl, keys.fingerprint))
        return 0
    return await _with_store(args, work)


async def cmd_revoke(args: argparse.Namespace) -> int:
    async def work(config: ServerConfig, store: Store) -> int:
        if await revoke_agent(store, args.agent_id) is None:
            print(f"syncd: no agent {args.agent_id}", file=sys.stderr)
            return 1
        print(f"Revoked {args.agent_id}; nothing it sends from now on is stored.",
              file=sys.stderr)
        return 0
    return await _with_store(args, work)


async def cmd_import(args: argparse.Namespace) -> int:
    folder: Path = args.folder
    if not folder.is_dir():
        print(f"syncd: {folder} is not a folder", file=sys.stderr)
        return 2
    if not bundle_files(folder):
        print(f"syncd: no bundle files (*.csbundle) in {folder}", file=sys.stderr)
        return 1
    keys = ServerKeys.load(ServerPaths(args.data_dir).root)

    async def work(config: ServerConfig, store: Store) -> int:
        documents = DocumentStore(ServerPaths(args.data_dir).root / "documents", store)
        code = 0
        for result in await import_folder(Ingest(config, store, keys, documents), folder):
            if isinstance(result, BundleRefused):
                print(f"syncd: {result}", file=sys.stderr)
                if result.refusal_file is not None:
                    print(f"{result.name}: refused ({result.code}); signed refusal for the "
                          f"officer in {result.refusal_file}")
                code = 1
                continue
            position = "" if result.acked_seq is None else f", acked up to seq {result.acked_seq}"
            note = " (acks unchanged)" if result.unchanged else ""
            print(f"{result.name}: agent {result.agent_id}, {result.batches} batches, "
                  f"{result.chunks} document chunks{position}, {result.refused_items} refused; "
                  f"acks in {result.acks_file}{note}")
        return code
    return await _with_store(args, work)


def _read_password() -> str | None:
    """Asked twice at a terminal; otherwise the first line of stdin. None: they differ."""
    if sys.stdin.isatty():
        first = getpass.getpass("Mật khẩu / Password: ")
        if getpass.getpass("Nhập lại / Repeat: ") != first:
            return None
        return first
    return sys.stdin.readline().rstrip("\r\n")


async def cmd_user_add(args: argparse.Namespace) -> int:
    password = _read_password()
    if password is None:
        print("syncd: the two passwords differ; nothing changed", file=sys.stderr)
        return 2

    async def work(config: ServerConfig, store: Store) -> int:
        try:
            await add_user(store, args.name, password, args.role)
        except RequestError as exc:
            print(f"syncd: {exc.message}; nothing changed", file=sys.stderr)
            return 2
        print(f"User {args.name} added ({args.role}); log in at /ui/ on the server.",
              file=sys.stderr)
        return 0
    return await _with_store(args, work)


async def cmd_catalogue_import(args: argparse.Namespace) -> int:
    try:
        raw = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"syncd: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2

    async def work(config: ServerConfig, store: Store) -> int:
        try:
            versions = await publish_catalogue(store, raw)
        except RequestError as exc:
            print(f"syncd: {args.file}: {exc.message}; nothing changed", file=sys.stderr)
            return 2
        print("Published: " + ", ".join(f"{name} version {v}" for name, v in versions.items())
              + "; agents pull it at their next sync.", file=sys.stderr)
        return 0
    return await _with_store(args, work)


def _os_user() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in this environment
        return None


async def cmd_set_status(args: argparse.Namespace) -> int:
    async def work(config: ServerConfig, store: Store) -> int:
        by = args.by if args.by is not None else _os_user()
        try:
            done = await change_status(store, args.dossier, args.status, args.note, by)
        except RequestError as exc:
            print(f"syncd: {exc.message}; không thay đổi gì / nothing changed",
                  file=sys.stderr)
            return 2
        print(f"{done.code}: {done.previous} -> {done.change.status}; xã {done.commune_code} "
              "nhận ở lần đồng bộ tới / the commune receives it at its next sync.",
              file=sys.stderr)
        return 0
    return await _with_store(args, work)


async def cmd_rotate_key(args: argparse.Namespace) -> int:
    key_id = ServerKeys.rotate(ServerPaths(args.data_dir).root)
    print(f"New sealing key {key_id} is current; older keys are kept so batches sealed to "
          "them still open. Restart `syncd serve` to use it.", file=sys.stderr)
    return 0


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    print("\t".join(columns))
    for row in rows:
        print("\t".join("" if row.get(c) is None else str(row.get(c)) for c in columns))


async def cmd_dossiers(args: argparse.Namespace) -> int:
    async def work(config: ServerConfig, store: Store) -> int:
        rows = await store.dossiers(args.commune)
        if args.json:
            print(json.dumps(rows, ensure_ascii=False, indent=1))
        else:
            flat = [{**r, "applicant": r["applicant"]["name"]} for r in rows]
            _print_table(flat, ["code", "commune_code", "procedure_code", "applicant", "status",
                                "received_at"])
        return 0
    return await _with_store(args, work)


async def cmd_agents(args: argparse.Namespace) -> int:
    async def work(config: ServerConfig, store: Store) -> int:
        rows = await store.agents()
        if args.json:
            print(json.dumps(rows, ensure_ascii=False, indent=1))
        else:
            _print_table(rows, ["agent_id", "commune_code", "name", "epoch", "acked_seq",
                                "last_seen", "queue_depth", "oldest_unsent_s", "quarantined",
                                "agent_version", "clock_skew_s"])
        return 0
    return await _with_store(args, work)


async def cmd_alerts(args: argparse.Namespace) -> int:
    async def work(config: ServerConfig, store: Store) -> int:
        rows = await store.alerts()
        if args.json:
            print(json.dumps(rows, ensure_ascii=False, indent=1))
        else:
            _print_table(rows, ["id", "kind", "agent_id", "epoch", "seq", "created_at", "detail"])
        return 0
    return await _with_store(args, work)


async def cmd_document(args: argparse.Namespace) -> int:
    async def work(config: ServerConfig, store: Store) -> int:
        rows = await store.read("SELECT complete FROM documents WHERE sha256 = ?", args.sha256)
        if not rows or not rows[0][0]:
            state = "not complete yet" if rows else "unknown"
            print(f"syncd: document {args.sha256} is {state}", file=sys.stderr)
            return 1
        path = DocumentStore(ServerPaths(args.data_dir).root / "documents", store).path(
            args.sha256)
        with open(path, "rb") as src:
            while block := src.read(1 << 20):
                sys.stdout.buffer.write(block)
        sys.stdout.buffer.flush()
        return 0
    if not re.fullmatch(r"[0-9a-f]{64}", args.sha256):
        print("syncd: SHA256 must be 64 lowercase hex digits", file=sys.stderr)
        return 2
    return await _with_store(args, work)


def _day(value: str | None, flag: str) -> Any:
    """``--from``/``--to`` as a date, or None; ValueError naming the flag."""
    if value is None:
        return None
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{flag} must be a date YYYY-MM-DD, not {value!r}") from None


def _period(args: argparse.Namespace) -> tuple[Any, Any]:
    start, end = _day(args.date_from, "--from"), _day(args.date_to, "--to")
    if start is not None and end is not None and start > end:
        raise ValueError(f"--from {start} is after --to {end}")
    return start, end


def _write_utf8(text: str) -> None:
    """Print ``text`` as UTF-8 whatever the locale (names are Vietnamese)."""
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8"))
    sys.stdout.buffer.flush()


def _report_text(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, ensure_ascii=False, indent=1) + "\n"
    out = io.StringIO()
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        writer.writerows([row[c] for c in COLUMNS] for row in rows)
        return out.getvalue()
    shown = [*rows, {"commune_code": "(all)", "procedure_code": "", "procedure_name": "",
                     **total_row(rows)}] if rows else []
    # The procedure's name is long: last, so the numbers line up.
    columns = [c for c in COLUMNS if c != "procedure_name"] + ["procedure_name"]
    print("\t".join(columns), file=out)
    for row in shown:
        rate = row["on_time_rate"]
        cells = {**row, "on_time_rate": "-" if rate is None else f"{rate:.2%}"}
        print("\t".join(str(cells[c]) for c in columns), file=out)
    return out.getvalue()


async def cmd_report(args: argparse.Namespace) -> int:
    try:
        start, end = _period(args)
    except ValueError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return 2
    if args.commune is not None and not _COMMUNE.fullmatch(args.commune):
        print("syncd: --commune must be a 5-digit commune code", file=sys.stderr)
        return 2

    async def work(config: ServerConfig, store: Store) -> int:
        rows = await on_time_report(store, date_from=start, date_to=end, commune=args.commune,
                                    now=datetime.now(UTC))
        _write_utf8(_report_text(rows, "json" if args.json else "csv" if args.csv else "table"))
        return 0
    return await _with_store(args, work)


async def cmd_export_dvcqg(args: argparse.Namespace) -> int:
    try:
        start, end = _period(args)
    except ValueError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return 2

    async def work(config: ServerConfig, store: Store) -> int:
        rows = await export_dvcqg(store, date_from=start, date_to=end)
        _write_utf8(json.dumps(rows, ensure_ascii=False, indent=1) + "\n")
        return 0
    return await _with_store(args, work)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=None,
                        help="server data directory (default: $SYNCD_DATA_DIR or a per-user "
                             "folder)")
    common.add_argument("--db", default=None, metavar="URL",
                        help="PostgreSQL database, postgresql://user@host:port/name (default: "
                             "$SYNCD_DB, else SQLite in the data directory)")
    parser = argparse.ArgumentParser(prog="syncd", description="commune-sync central server")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", parents=[common], help="create config, keys and database")
    p.set_defaults(func=cmd_init)
    p = sub.add_parser("serve", parents=[common], help="run the server until SIGTERM")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8700)
    p.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate chain")
    p.add_argument("--tls-key", type=Path, default=None, help="PEM private key")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("enroll", parents=[common], help="print a one-time enrollment token")
    p.add_argument("--commune", required=True, help="5-digit commune code")
    p.add_argument("--name", default=None, help="name of the PC or desk")
    p.add_argument("--expires-hours", type=float, default=None,
                   help="token lifetime (default: token_ttl_hours in syncd.json, 72)")
    p.set_defaults(func=cmd_enroll)
    p = sub.add_parser("revoke", parents=[common], help="cut an agent off")
    p.add_argument("agent_id")
    p.set_defaults(func=cmd_revoke)
    p = sub.add_parser("import", parents=[common],
                       help="ingest agents' bundles from a folder (USB stick); write acks files")
    p.add_argument("folder", type=Path, help="folder holding *.csbundle files")
    p.set_defaults(func=cmd_import)
    p = sub.add_parser("user", help="operator accounts for the pages")
    users = p.add_subparsers(dest="user_command", required=True, metavar="add")
    p = users.add_parser("add", parents=[common],
                         help="add an operator; the password is asked for (or read from stdin)")
    p.add_argument("name")
    p.add_argument("--role", choices=ROLES, required=True)
    p.set_defaults(func=cmd_user_add)
    p = sub.add_parser("catalogue", help="what agents pull: procedures and holidays")
    catalogue = p.add_subparsers(dest="catalogue_command", required=True, metavar="import")
    p = catalogue.add_parser("import", parents=[common],
                             help="publish a catalogue file (JSON: procedures, holidays, "
                                  "working_weekends)")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_catalogue_import)
    p = sub.add_parser("set-status", parents=[common],
                       help="set a dossier's status here; its commune receives it at the next "
                            "sync")
    p.add_argument("dossier", metavar="CODE_OR_ID", help="the dossier's code or id")
    p.add_argument("status", help="a status name: " + ", ".join(STATUSES))
    p.add_argument("--note", default=None, help="shown to the commune (at most 2000 characters)")
    p.add_argument("--by", default=None, metavar="NAME",
                   help="who set it (default: the operating system's user name)")
    p.set_defaults(func=cmd_set_status)
    p = sub.add_parser("rotate-key", parents=[common],
                       help="add a new server sealing key (old ones are kept)")
    p.set_defaults(func=cmd_rotate_key)
    p = sub.add_parser("document", parents=[common], help="write a document's bytes to stdout")
    p.add_argument("sha256")
    p.set_defaults(func=cmd_document)
    p = sub.add_parser("report", parents=[common],
                       help="on-time report per commune and procedure")
    p.add_argument("--from", dest="date_from", default=None, metavar="DATE",
                   help="first day received, YYYY-MM-DD (Vietnamese time)")
    p.add_argument("--to", dest="date_to", default=None, metavar="DATE",
                   help="last day received, YYYY-MM-DD (Vietnamese time)")
    p.add_argument("--commune", default=None, help="5-digit commune code")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true")
    shape.add_argument("--csv", action="store_true")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("export-dvcqg", parents=[common],
                       help="dossiers as JSON for the national public-service portal")
    p.add_argument("--from", dest="date_from", default=None, metavar="DATE",
                   help="first day received, YYYY-MM-DD (Vietnamese time)")
    p.add_argument("--to", dest="date_to", default=None, metavar="DATE",
                   help="last day received, YYYY-MM-DD (Vietnamese time)")
    p.set_defaults(func=cmd_export_dvcqg)
    for name, func, text in (("dossiers", cmd_dossiers, "list current dossiers"),
                             ("agents", cmd_agents, "list enrolled agents"),
                             ("alerts", cmd_alerts, "list alerts for operators")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("--json", action="store_true")
        if name == "dossiers":
            p.add_argument("--commune", default=None)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.data_dir = args.data_dir or default_data_dir()
    logging.basicConfig(level=logging.INFO if args.command == "serve" else logging.WARNING,
                        handlers=[json_log_handler()])
    try:
        return asyncio.run(args.func(args))
    except KeyboardInterrupt:
        return 130
    except SyncdError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return 1
    except (OSError, sqlite3.Error) as exc:
        print(f"syncd: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
