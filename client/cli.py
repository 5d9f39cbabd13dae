"""``sync-agent``: the commune agent's command line.

Exit codes: 0 success; 1 setup or server problem; 2 bad input or usage;
3 sync incomplete (records still waiting); 4 queue damaged.
Errors are one plain sentence on stderr, in Vietnamese or English.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any

from .agent import Agent, enroll
from .clock import wall_now
from .config import AgentPaths, default_data_dir
from .control import Failure, ask_daemon, daemon_port, describe_failure
from .daemon import run_daemon
from .errors import (
    AgentError,
    DocumentDamaged,
    InputError,
    QueueCorrupt,
    RefusedError,
    SetupError,
    TransportError,
)
from .i18n import Messages, pick_language
from .intake import api_token
from .lock import SyncLock, held_elsewhere
from .published import pull_quietly
from .sneakernet import ExportedFile, ExportFailed, export_bundles, import_acks

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_INCOMPLETE, EXIT_DAMAGED = 0, 1, 2, 3, 4


def _read_items(source: str, say: Messages) -> list[Any]:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(say("cannot_read", path=source, detail=exc.__class__.__name__)) from exc
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        lines = [line for line in text.splitlines() if line.strip()]
        items = []
        for number, line in enumerate(lines, start=1):
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InputError(say("bad_json", detail=f"line {number}: {exc.msg}")) from exc
        if not items:
            raise InputError(say("bad_json", detail="empty input")) from None
        return items
    return parsed if isinstance(parsed, list) else [parsed]


async def _with_agent(paths: AgentPaths, work: Callable[[Agent], Coroutine[Any, Any, int]]) -> int:
    agent = await Agent.open(paths)
    try:
        return await work(agent)
    finally:
        await agent.close()


async def cmd_init(args: argparse.Namespace, say: Messages) -> int:
    config = await enroll(AgentPaths(args.data_dir), args.server, args.token, args.name,
                          ca_file=args.ca_file)
    print(say("enrolled", agent=config.agent_id, commune=config.commune_code))
    if config.server_url.startswith("http:") and not config.server_url.startswith(
            ("http://127.", "http://localhost")):
        print(say("plain_http"), file=sys.stderr)
    return EXIT_OK


async def cmd_add(args: argparse.Namespace, say: Messages) -> int:
    items = _read_items(args.file, say)

    async def work(agent: Agent) -> int:
        base_dir = Path.cwd() if args.file == "-" else Path(args.file).resolve().parent
        for dossier_id in await agent.add(items, base_dir=base_dir):
            print(dossier_id)
        return EXIT_OK
    return await _with_agent(AgentPaths(args.data_dir), work)


async def cmd_update(args: argparse.Namespace, say: Messages) -> int:
    async def work(agent: Agent) -> int:
        seq = await agent.update_status(args.id, args.status, args.note, args.by or _officer())
        print(say("updated", seq=seq))
        return EXIT_OK
    return await _with_agent(AgentPaths(args.data_dir), work)


def _officer() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return None


def _ago(say: Messages, moment: str | None) -> str:
    """How long ago, in words (the PC's clock against itself: shown, never acted on)."""
    if not moment:
        return say("ago_never")
    try:
        seconds = (wall_now() - datetime.fromisoformat(moment)).total_seconds()
    except ValueError:
        return moment
    if seconds < 60:
        return say("ago_now")
    if seconds < 3600:
        return say("ago_minutes", n=int(seconds // 60))
    if seconds < 48 * 3600:
        return say("ago_hours", n=int(seconds // 3600))
    return say("ago_days", n=int(seconds // 86400))


async def cmd_status(args: argparse.Namespace, say: Messages) -> int:
    async def work(agent: Agent) -> int:
        st = await agent.queue.status()
        docs, doc_bytes = await agent.queue.documents_waiting()
        dossiers = await agent.pending_dossiers()
        report = {"pending": st.pending, "dossiers_pending": dossiers,
                  "acked_seq": st.acked_seq, "last_seq": st.last_seq,
                  "epoch": st.epoch, "last_success": st.last_success,
                  "last_error": st.last_error, "refused": st.refused,
                  "documents_pending": docs, "document_bytes_pending": doc_bytes,
                  "agent_id": agent.config.agent_id}
        if args.json:
            print(json.dumps(report, ensure_ascii=False))
            return EXIT_OK
        ago = _ago(say, st.last_success)
        if st.pending:
            print(say("status_waiting", dossiers=dossiers, ago=ago))
            if dossiers != st.pending:
                print(say("status_records", pending=st.pending))
            if st.last_error:
                print(say("status_reason", reason=st.last_error))
        else:
            print(say("status_clear", ago=ago))
        if docs:
            print(say("documents_waiting", count=docs, bytes=doc_bytes))
        return EXIT_OK
    return await _with_agent(AgentPaths(args.data_dir), work)


async def cmd_verify(args: argparse.Namespace, say: Messages) -> int:
    async def work(agent: Agent) -> int:
        try:
            count = await agent.queue.verify()
            for sha256, size in await agent.queue.all_documents():
                await asyncio.to_thread(agent.documents.verify, sha256, size)
        except QueueCorrupt as exc:
            print(say("verify_bad", seq=exc.seq, epoch=exc.epoch, reason=exc.reason),
                  file=sys.stderr)
            return EXIT_DAMAGED
        except DocumentDamaged as exc:
            print(say("document_bad", sha256=exc.sha256), file=sys.stderr)
            return EXIT_DAMAGED
        print(say("verify_ok", count=count))
        return EXIT_OK
    return await _with_agent(AgentPaths(args.data_dir), work)


def _failure_words(say: Messages, failure: Failure) -> str:
    """One sentence for the officer: why a sync (here or in the daemon) left records waiting."""
    if failure.kind == "damaged":
        return say("reason_damaged", seq=failure.seq)
    if failure.kind == "document":
        return say("document_bad", sha256=failure.sha256)
    if failure.kind == "revoked":
        return say("reason_revoked")
    if failure.kind == "refused":
        return say("reason_refused", error=failure.message)
    if failure.kind == "stopped":
        return say("reason_stopped")
    if failure.kind == "busy":
        return say("reason_busy")
    return say("reason_unreachable", error=failure.message)


def _why_waiting(exc: BaseException, say: Messages, last_error: str | None,
                 timeout_s: float) -> str:
    """One sentence for the officer: why records still wait."""
    if isinstance(exc, TimeoutError):
        return say("reason_timeout", seconds=timeout_s, error=last_error or "—")
    return _failure_words(say, describe_failure(exc))


async def _report_sync(agent: Agent, say: Messages, reason: str | None) -> int:
    st = await agent.queue.status()
    docs, doc_bytes = await agent.queue.documents_waiting()
    if st.pending > 0 or docs > 0 or reason is not None:
        print(say("sync_waiting", acked=st.acked_seq, pending=st.pending, reason=reason or "—"),
              file=sys.stderr)
        if docs:
            print(say("documents_waiting", count=docs, bytes=doc_bytes), file=sys.stderr)
        return EXIT_INCOMPLETE
    print(say("sync_done", acked=st.acked_seq))
    if st.refused:
        print(say("sync_refused", refused=st.refused), file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_OK


class _Bar:
    """The progress bar ``sync-now`` draws at a terminal (records and bytes)."""

    def __init__(self, say: Messages) -> None:
        self._say = say
        self.shown = sys.stderr.isatty()

    def __call__(self, acked: int, total: int, sent_bytes: int) -> None:
        if self.shown:
            filled = 20 * acked // total if total else 20
            bar = "█" * filled + "░" * (20 - filled)
            print(f"\r{bar} " + self._say("progress", acked=acked, total=total,
                                          kib=max(1, sent_bytes // 1024)),
                  end="", file=sys.stderr)

    def close(self) -> None:
        if self.shown:
            print(file=sys.stderr)


async def _follow_daemon(agent: Agent, say: Messages, port: int, bar: _Bar,
                         timeout_s: float) -> str | None:
    """Ask the running daemon to sync and follow it; return why records still
    wait (None: nothing does).

    Raises:
        ConnectionError: the daemon did not answer or stopped first.
    """
    print(say("asking_daemon"), file=sys.stderr)
    try:
        async with asyncio.timeout(timeout_s):
            failure = await ask_daemon(port, api_token(agent.paths.root), bar)
    except TimeoutError as exc:
        return _why_waiting(exc, say, (await agent.queue.status()).last_error, timeout_s)
    return None if failure is None else _failure_words(say, failure)


async def _sync_here(agent: Agent, say: Messages, bar: _Bar, timeout_s: float) -> str | None:
    """Sync from this process, under the sync lock; return why records still wait."""
    transport = agent.transport()
    engine = agent.engine(transport, progress=bar)
    await agent.queue.wake()  # a daemon that just started stops waiting out its backoff
    try:
        async with asyncio.timeout(timeout_s):
            await engine.push_until_done(timeout_s=timeout_s)
            await pull_quietly(agent, transport)  # what the province publishes
    except (TimeoutError, AgentError) as exc:
        last_error = (await agent.queue.status()).last_error
        return _why_waiting(exc, say, last_error, timeout_s)
    finally:
        await transport.close()
    return None


async def cmd_sync_now(args: argparse.Namespace, say: Messages) -> int:
    async def work(agent: Agent) -> int:
        bar = _Bar(say)
        deadline = asyncio.get_running_loop().time() + args.timeout
        try:
            port = daemon_port(agent.paths)
            if port is not None:
                try:
                    reason = await _follow_daemon(agent, say, port, bar, args.timeout)
                    return await _report_sync(agent, say, reason)
                except ConnectionError as exc:
                    print(say("daemon_gone", detail=exc), file=sys.stderr)
            left = max(1.0, deadline - asyncio.get_running_loop().time())
            reason = await _sync_here(agent, say, bar, left)
        finally:
            bar.close()
        return await _report_sync(agent, say, reason)
    return await _with_agent(AgentPaths(args.data_dir), work)


async def cmd_rotate_key(args: argparse.Namespace, say: Messages) -> int:
    async def work(agent: Agent) -> int:
        async with SyncLock(agent.paths.sync_lock, wait_s=60):
            await agent.rotate_key()
        print(say("key_rotated", agent=agent.config.agent_id))
        return EXIT_OK
    return await _with_agent(AgentPaths(args.data_dir), work)


async def cmd_run(args: argparse.Namespace, say: Messages) -> int:
    if not 0 <= args.ui_port <= 65535:
        print(say("bad_port"), file=sys.stderr)
        return EXIT_INPUT
    if held_elsewhere(AgentPaths(args.data_dir).daemon_lock):
        print(say("daemon_running"), file=sys.stderr)
        return EXIT_ERROR
    await run_daemon(AgentPaths(args.data_dir), ui_port=args.ui_port, scan_dir=args.scan_dir)
    return EXIT_OK


async def cmd_export(args: argparse.Namespace, say: Messages) -> int:
    folder: Path = args.to
    why = {"full": "write_full", "denied": "write_denied", "not_folder": "write_not_folder"}

    def written(part: ExportedFile, total: int) -> None:  # progress, on stderr
        print(say("export_progress", file=part.name, mib=f"{total / (1 << 20):.1f}"),
              file=sys.stderr, flush=True)

    async def work(agent: Agent) -> int:
        try:
            result = await export_bundles(agent, folder, on_part=written)  # makes the folder
        except ExportFailed as exc:
            detail = say(why[exc.reason]) if exc.reason in why else exc.detail
            print(say("export_failed", folder=folder, detail=detail), file=sys.stderr)
            return EXIT_ERROR
        for part in result.files:
            print(say("export_file", file=part.name, batches=part.batches, records=part.records,
                      chunks=part.chunks))
        if not result.files:
            print(say("export_nothing"))
        else:
            print(say("export_done", records=max(0, result.last_seq - result.first_seq + 1),
                      first=result.first_seq, last=result.last_seq,
                      documents=result.documents, folder=folder))
        if result.damaged is not None:
            exc = result.damaged
            print(say("verify_bad", seq=exc.seq, epoch=exc.epoch, reason=exc.reason),
                  file=sys.stderr)
            return EXIT_DAMAGED
        return EXIT_OK
    return await _with_agent(AgentPaths(args.data_dir), work)


async def cmd_import_acks(args: argparse.Namespace, say: Messages) -> int:
    async def work(agent: Agent) -> int:
        results = await import_acks(agent, args.folder)
        code = EXIT_OK
        for result in results:
            if result.problem is not None:
                print(say("refusal_bad" if result.is_refusal_file else "acks_bad",
                          file=result.name, detail=result.problem), file=sys.stderr)
                code = EXIT_ERROR
            if result.bundle_refused is not None:  # verified; it changes nothing here
                refused = result.bundle_refused
                print(say("acks_bundle_refused", file=result.name, code=refused.code,
                          message=refused.message(say.lang)), file=sys.stderr)
                code = EXIT_ERROR
            if result.stale_epoch is not None:
                print(say("acks_stale", file=result.name, epoch=result.stale_epoch),
                      file=sys.stderr)
            for refusal in result.refusals:
                print(say("acks_refused", file=result.name, error=refusal), file=sys.stderr)
            if result.acked_seq is not None or result.documents:
                print(say("acks_file", file=result.name, acked=result.acked_seq or 0,
                          documents=result.documents))
        if not results:
            print(say("acks_none", folder=args.folder), file=sys.stderr)
            return EXIT_ERROR
        reported = await _report_sync(agent, say, None)
        return code if code != EXIT_OK else reported
    return await _with_agent(AgentPaths(args.data_dir), work)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=None,
                        help="agent data directory (default: $SYNC_AGENT_DATA_DIR or a per-user "
                             "folder)")
    common.add_argument("--lang", choices=("vi", "en"), default=None,
                        help="message language (default: from the locale)")
    parser = argparse.ArgumentParser(prog="sync-agent", description=(
        "Đồng bộ hồ sơ một cửa của xã lên tỉnh / commune-sync agent"))
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", parents=[common], help="enroll this PC and create the queue")
    p.add_argument("--server", required=True, help="server URL, e.g. http://127.0.0.1:8700")
    p.add_argument("--token", required=True, help="one-time enrollment token from `syncd enroll`")
    p.add_argument("--ca-file", type=Path, default=None,
                   help="PEM CA certificate to trust for an https server (copied as ca.pem)")
    p.add_argument("--name", default=None, help="a name for this PC")
    p.set_defaults(func=cmd_init)
    p = sub.add_parser("add", parents=[common], help="record dossiers from a JSON file")
    p.add_argument("file", help="JSON object, array or JSON lines; - for stdin")
    p.set_defaults(func=cmd_add)
    p = sub.add_parser("update", parents=[common], help="change a dossier's status")
    p.add_argument("id", help="dossier id (UUID)")
    p.add_argument("--status", required=True)
    p.add_argument("--note", default=None)
    p.add_argument("--by", default=None, help="officer name (default: the login name)")
    p.set_defaults(func=cmd_update)
    p = sub.add_parser("sync-now", parents=[common], help="push until everything is acknowledged")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to keep trying")
    p.set_defaults(func=cmd_sync_now)
    p = sub.add_parser("status", parents=[common], help="what is waiting and the last sync")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("run", parents=[common], help="run the sync daemon")
    p.add_argument("--ui-port", type=int, default=8701,
                   help="intake page and local API on 127.0.0.1 (default 8701; 0: none)")
    p.add_argument("--scan-dir", type=Path, default=None,
                   help="folder the scanner saves into; its finished files are offered on the "
                        "intake page (default: scans in the data directory)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("rotate-key", parents=[common],
                       help="replace this PC's signing key (registered with the server)")
    p.set_defaults(func=cmd_rotate_key)
    p = sub.add_parser("verify", parents=[common], help="check every queue record")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("export", parents=[common],
                       help="write everything not yet acknowledged to a folder (USB stick)")
    p.add_argument("--to", type=Path, required=True, help="folder to write bundle files into")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("import-acks", parents=[common],
                       help="apply the server's acks files brought back on a USB stick")
    p.add_argument("folder", type=Path, help="folder holding *.csacks files")
    p.set_defaults(func=cmd_import_acks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.data_dir = args.data_dir or default_data_dir()
    say = Messages(pick_language(args.lang))
    logging.basicConfig(level=logging.INFO if args.command == "run" else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(args.func(args, say))
    except KeyboardInterrupt:
        print(say("interrupted"), file=sys.stderr)
        return 130
    except InputError as exc:
        print(say("invalid_input") + " " + str(exc), file=sys.stderr)
        for problem in exc.problems:
            print("  - " + problem, file=sys.stderr)
        return EXIT_INPUT
    except QueueCorrupt as exc:
        print(say("verify_bad", seq=exc.seq, epoch=exc.epoch, reason=exc.reason), file=sys.stderr)
        return EXIT_DAMAGED
    except SetupError as exc:
        print(say("setup", detail=exc), file=sys.stderr)
        return EXIT_ERROR
    except RefusedError as exc:
        print(say("refused", detail=exc), file=sys.stderr)
        return EXIT_ERROR
    except (TransportError, AgentError) as exc:
        print(say("unreachable", detail=exc), file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(say("setup", detail=f"{exc.__class__.__name__}: {exc.strerror or exc}"),
              file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
