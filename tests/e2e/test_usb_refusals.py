"""The USB stick's two harder cases, through real processes and real files:
a refused bundle answered on the stick with a signed refusal file, and an
export that streams several part files (or fails cleanly when it cannot write).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.agent import Agent
from client.config import AgentPaths
from client.sneakernet import ExportFailed, export_bundles
from protocol.bundles import decode_bundle
from tests.e2e.test_usb import (
    acks_files,
    add,
    export,
    import_acks,
    server_records,
    syncd_import,
)
from tests.support.dossiers import make_dossiers
from tests.support.procs import AGENT, Server, agent, agent_status, cli_env, syncd


@pytest.fixture
def offline(server: Server, agent_dir: Path) -> Iterator[Server]:
    """The agent enrolled, then the link went down (no server to reach)."""
    server.stop()
    yield server


def refusal_files(stick: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(stick.glob("*.csrefused"))}


def import_acks_in(agent_dir: Path, stick: Path, lang: str) -> subprocess.CompletedProcess[str]:
    return agent("import-acks", "--data-dir", str(agent_dir), "--lang", lang, str(stick),
                 check=False)


def test_a_revoked_agents_bundle_is_answered_with_a_signed_refusal(
        server: Server, agent_dir: Path, tmp_path: Path) -> None:
    stick = tmp_path / "usb"
    add(agent_dir, make_dossiers(4, seed=41), tmp_path)
    export(agent_dir, stick)
    [bundle] = sorted(stick.glob("*.csbundle"))
    agent_id = agent_status(agent_dir)["agent_id"]
    syncd("revoke", "--data-dir", str(server.data_dir), agent_id)

    result = syncd_import(server, stick, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if agent_id in line]
    assert "revoked" in line and "nothing stored" in line  # the operator's line, as before
    refusals = refusal_files(stick)
    assert list(refusals) == [bundle.name.removesuffix(".csbundle") + ".csrefused"]
    assert f"in {next(iter(refusals))}" in result.stdout
    assert acks_files(stick) == {} and server_records(server) == 0

    again = syncd_import(server, stick, check=False)  # the same answer, byte for byte
    assert again.returncode == 1 and refusal_files(stick) == refusals

    vi = import_acks_in(agent_dir, stick, "vi")
    assert vi.returncode == 1, vi.stderr
    [said] = [line for line in vi.stderr.splitlines() if "từ chối cả gói" in line]
    assert "thu hồi quyền đồng bộ" in said and "(revoked)" in said
    en = import_acks_in(agent_dir, stick, "en")
    assert en.returncode == 1, en.stderr
    [said] = [line for line in en.stderr.splitlines() if "refused the whole bundle" in line]
    assert "revoked by an operator" in said and next(iter(refusals)) in said
    assert "Traceback" not in vi.stderr + en.stderr
    status = agent_status(agent_dir)
    assert status["pending"] == 4 and status["acked_seq"] == 0  # nothing applied


def test_a_tampered_refusal_is_reported_and_ignored(server: Server, agent_dir: Path,
                                                    tmp_path: Path) -> None:
    stick = tmp_path / "usb"
    add(agent_dir, make_dossiers(2, seed=42), tmp_path)
    export(agent_dir, stick)
    syncd("revoke", "--data-dir", str(server.data_dir), agent_status(agent_dir)["agent_id"])
    syncd_import(server, stick, check=False)
    [path] = sorted(stick.glob("*.csrefused"))
    data = path.read_bytes()
    assert data.count(b"revoked by") == 1
    path.write_bytes(data.replace(b"revoked by", b"revoked bx"))  # reworded: not the server's

    for lang, words in (("en", "not a valid refusal signed by the server"),
                        ("vi", "không phải thông báo từ chối hợp lệ do máy chủ ký")):
        result = import_acks_in(agent_dir, stick, lang)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        [line] = [line for line in result.stderr.splitlines() if path.name in line]
        assert words in line
        assert "refused the whole bundle" not in result.stderr
        assert "từ chối cả gói" not in result.stderr
    assert agent_status(agent_dir)["pending"] == 2

    # The server's own refusal, beside a bundle it does not answer: not believed.
    path.write_bytes(data)
    [bundle] = sorted(stick.glob("*.csbundle"))
    bundle.write_bytes(bundle.read_bytes() + b"\x00")
    result = import_acks_in(agent_dir, stick, "en")
    [line] = [line for line in result.stderr.splitlines() if path.name in line]
    assert result.returncode == 1 and "another bundle than the one beside it" in line
    assert "refused the whole bundle" not in result.stderr


def test_a_refusal_from_the_wrong_server_is_not_believed_and_the_right_one_replaces_it(
        server: Server, agent_dir: Path, tmp_path: Path) -> None:
    """The stick first went to another province's server (unknown agent there),
    then to the agent's own: the accepted import removes the stale refusal."""
    stick = tmp_path / "usb"
    ids = add(agent_dir, make_dossiers(3, seed=43), tmp_path)
    export(agent_dir, stick)
    elsewhere = Server(tmp_path / "elsewhere").init()
    wrong = syncd_import(elsewhere, stick, check=False)
    assert wrong.returncode == 1 and "unknown agent" in wrong.stderr
    [refusal] = refusal_files(stick)
    result = import_acks_in(agent_dir, stick, "en")  # signed, but not by the pinned key
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() if refusal in line]
    assert "not a valid refusal signed by the server" in line and "ignored" in line
    assert agent_status(agent_dir)["pending"] == 3

    right = syncd_import(server, stick)
    assert "0 refused" in right.stdout
    assert refusal_files(stick) == {} and len(acks_files(stick)) == 1
    done = import_acks_in(agent_dir, stick, "en")
    assert done.returncode == 0, done.stderr
    assert agent_status(agent_dir)["pending"] == 0
    assert sorted(d["id"] for d in server.dossiers()) == sorted(ids)


async def _export(agent_dir: Path, stick: Path, part_bytes: int,
                  told: list[tuple[str, int]] | None = None) -> list[str]:
    agent_ = await Agent.open(AgentPaths(agent_dir))
    try:
        result = await export_bundles(
            agent_, stick, part_bytes=part_bytes,
            on_part=lambda part, total: told.append((part.name, total)) if told is not None
            else None)
    finally:
        await agent_.close()
    return [part.name for part in result.files]


async def test_an_export_larger_than_a_part_writes_several_files_exactly_once(
        offline: Server, agent_dir: Path, tmp_path: Path) -> None:
    server, stick = offline, tmp_path / "usb"
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(os.urandom(3 * 1024 * 1024 + 77))  # four chunks
    dossiers = make_dossiers(1200, seed=44)  # two batches
    dossiers[5]["documents"] = [{"name": "Bản scan", "path": str(scan)}]
    ids = add(agent_dir, dossiers, tmp_path)

    told: list[tuple[str, int]] = []
    names = await _export(agent_dir, stick, part_bytes=1 << 20, told=told)
    assert names == sorted(p.name for p in stick.glob("*.csbundle"))
    # Progress as each part landed: its name and the bytes on the stick so far.
    assert [name for name, _ in told] == names
    sizes = [(stick / name).stat().st_size for name in names]
    assert [total for _, total in told] == [sum(sizes[:n + 1]) for n in range(len(sizes))]
    assert len(names) >= 4 and names[0].endswith("-001.csbundle")
    assert not list(stick.glob(".*"))  # no temp file left
    items = [item for name in names for item in decode_bundle((stick / name).read_bytes()).items]
    assert [i.path for i in items] == ["/v1/batches"] * 2 + ["/v1/documents/chunk"] * 4

    first = syncd_import(server, stick)
    assert first.stdout.count("0 refused") == len(names)
    acks = acks_files(stick)
    assert len(acks) == len(names)
    syncd_import(server, stick)  # again: nothing new is stored ...
    # ... and the parts of document chunks keep their acks byte for byte, though a
    # replayed chunk of a completed document is now answered "complete".
    chunk_parts = {name for name in acks if not name.endswith("-001.csacks")}
    assert {n: acks_files(stick)[n] for n in chunk_parts} == {n: acks[n] for n in chunk_parts}
    assert server_records(server) == 1200
    stored = {d["id"]: d for d in server.dossiers()}
    assert sorted(stored) == sorted(ids)
    [doc] = [d for d in stored[ids[5]]["documents"] if "sha256" in d]
    assert (server.data_dir / "documents" / doc["sha256"]).read_bytes() == scan.read_bytes()
    import_acks(agent_dir, stick)
    status = agent_status(agent_dir)
    assert status["pending"] == 0 and status["acked_seq"] == 1200
    assert status["documents_pending"] == 0
    assert server.alerts() == []


async def test_an_export_holds_one_part_in_memory_not_the_whole_export(
        agent_dir: Path, tmp_path: Path) -> None:
    scan = tmp_path / "scans.pdf"
    scan.write_bytes(os.urandom(24 * 1024 * 1024))
    add(agent_dir, [{**make_dossiers(1, seed=45)[0],
                     "documents": [{"name": "Một tuần scan", "path": str(scan)}]}], tmp_path)
    tracemalloc.start()
    try:
        names = await _export(agent_dir, tmp_path / "usb", part_bytes=2 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(names) >= 12
    # One open part (2 MiB) and the few copies of the chunk being sealed; holding
    # the export (24 MiB, then its encoding) would be several times this.
    assert peak < 12 << 20, f"peak {peak} bytes for 24 MiB in 2 MiB parts"


def test_an_unwritable_folder_is_a_clear_error_and_changes_nothing(
        offline: Server, agent_dir: Path, tmp_path: Path) -> None:
    add(agent_dir, make_dossiers(3, seed=46), tmp_path)
    before = agent_status(agent_dir)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for lang, words, why in (
            ("en", "Cannot write the bundle files into", "that path (or a part of it) is not"),
            ("vi", "Không ghi được tệp nào vào", "(hoặc một phần của nó) không phải là thư mục")):
        result = agent("export", "--data-dir", str(agent_dir), "--to", str(blocker / "usb"),
                       "--lang", lang, check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert words in result.stderr and why in result.stderr
        assert str(blocker / "usb") in result.stderr and result.stdout == ""
    assert "that path (or a part of it) is not a folder" in agent(
        "export", "--data-dir", str(agent_dir), "--to", str(blocker), "--lang", "en",
        check=False).stderr
    assert blocker.read_text() == "not a folder"
    assert agent_status(agent_dir) == before


async def test_export_failed_reason_for_a_path_under_a_file(agent_dir: Path,
                                                            tmp_path: Path) -> None:
    add(agent_dir, make_dossiers(1, seed=47), tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ExportFailed) as caught:
        await _export(agent_dir, blocker / "usb", part_bytes=1 << 20)
    assert caught.value.reason == "not_folder"


_FULL_STICK = r"""
set -u
mount -t tmpfs -o size=1536k tmpfs "$MNT" || exit 99
"$AGENT" export --data-dir "$DATA" --to "$MNT/usb" --lang "$LANG_"
echo "cli-exit=$?"
ls -A "$MNT/usb"
echo "--"
"$PYTHON" -c "$SMALL_PARTS"
ls -A "$MNT/small"
"""

_SMALL_PARTS = """
import asyncio, os, sys
from pathlib import Path
from client.agent import Agent
from client.config import AgentPaths
from client.sneakernet import ExportFailed, export_bundles

async def main():
    agent = await Agent.open(AgentPaths(Path(os.environ["DATA"])))
    try:
        await export_bundles(agent, Path(os.environ["MNT"]) / "small", part_bytes=1 << 19)
    except ExportFailed as exc:
        print("failed:", exc.reason)
    finally:
        await agent.close()

asyncio.run(main())
"""


def _on_a_full_stick(agent_dir: Path, mnt: Path, lang: str) -> subprocess.CompletedProcess[str]:
    """Run the exports in a private mount namespace on a 1.5 MiB tmpfs: a real
    ENOSPC, and the mount goes away with the process."""
    env = {**cli_env(lang), "MNT": str(mnt), "AGENT": AGENT, "DATA": str(agent_dir),
           "LANG_": lang, "PYTHON": sys.executable, "SMALL_PARTS": _SMALL_PARTS}
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           _FULL_STICK], capture_output=True, text=True, timeout=120, env=env,
                          cwd=Path(__file__).resolve().parents[2])


def test_a_full_stick_is_a_clear_error_and_leaves_no_file(offline: Server, agent_dir: Path,
                                                          tmp_path: Path) -> None:
    assert shutil.which("unshare"), "needs unshare(1) (util-linux) to mount a small tmpfs"
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(os.urandom(3 * 1024 * 1024))
    add(agent_dir, [{**make_dossiers(1, seed=48)[0],
                     "documents": [{"name": "Bản scan", "path": str(scan)}]}], tmp_path)
    before = agent_status(agent_dir)
    mnt = tmp_path / "stick"
    mnt.mkdir()
    for lang, words in (("en", "the stick or disk is full"), ("vi", "USB hoặc ổ đĩa đã đầy")):
        result = _on_a_full_stick(agent_dir, mnt, lang)
        assert result.returncode != 99, f"cannot mount a tmpfs here: {result.stderr.strip()}"
        cli, small = result.stdout.split("--\n")
        assert "cli-exit=1" in cli and words in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert cli.strip() == "cli-exit=1"  # no file listed: nothing left, not even a temp
        # Smaller parts: the first ones fit, a later one does not; all are removed.
        assert small.strip() == "failed: full"
    assert list(mnt.iterdir()) == []  # the tmpfs went away with its namespace
    assert agent_status(agent_dir) == before


async def test_an_export_interrupted_while_a_part_is_written_leaves_no_file(
        agent_dir: Path, tmp_path: Path) -> None:
    scan = tmp_path / "scans.pdf"
    scan.write_bytes(os.urandom(16 * 1024 * 1024))
    add(agent_dir, [{**make_dossiers(1, seed=49)[0],
                     "documents": [{"name": "Bản scan", "path": str(scan)}]}], tmp_path)
    stick = tmp_path / "usb"
    agent_ = await Agent.open(AgentPaths(agent_dir))
    try:
        export = asyncio.create_task(export_bundles(agent_, stick, part_bytes=8 << 20))
        deadline = asyncio.get_running_loop().time() + 60
        while not any(stick.glob(".*.tmp")):  # a part is being written by its thread
            assert not export.done() and asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.0005)
        export.cancel()  # Ctrl-C
        with pytest.raises(asyncio.CancelledError):
            await export
    finally:
        await agent_.close()
    assert list(stick.iterdir()) == []
