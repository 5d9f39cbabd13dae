"""The USB stick instead of the link, through real processes and real files:
`sync-agent export`, `syncd import`, `sync-agent import-acks`."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol.bundles import Bundle, BundleItem, decode_bundle, encode_bundle
from tests.support.dossiers import make_dossiers
from tests.support.procs import Server, agent, agent_status, enroll_agent, syncd


def add(agent_dir: Path, dossiers: list[dict[str, Any]], tmp_path: Path) -> list[str]:
    path = tmp_path / f"input-{agent_dir.name}.json"
    path.write_text(json.dumps(dossiers, ensure_ascii=False), encoding="utf-8")
    return agent("add", "--data-dir", str(agent_dir), str(path)).stdout.split()


def server_records(server: Server) -> int:
    with sqlite3.connect(server.data_dir / "syncd.db") as db:
        return int(db.execute("SELECT count(*) FROM records").fetchone()[0])


def export(agent_dir: Path, stick: Path, lang: str = "en") -> str:
    return agent("export", "--data-dir", str(agent_dir), "--to", str(stick), lang=lang).stdout


def syncd_import(server: Server, stick: Path, check: bool = True) -> Any:
    return syncd("import", "--data-dir", str(server.data_dir), str(stick), check=check)


def import_acks(agent_dir: Path, stick: Path, check: bool = True) -> Any:
    return agent("import-acks", "--data-dir", str(agent_dir), str(stick), check=check)


def acks_files(stick: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(stick.glob("*.csacks"))}


@pytest.fixture
def offline(server: Server, agent_dir: Path) -> Iterator[Server]:
    """The agent enrolled, then the link went down (no server to reach)."""
    server.stop()
    yield server


def test_usb_round_trip_with_a_document_and_double_imports_change_nothing(
        offline: Server, agent_dir: Path, tmp_path: Path) -> None:
    server, stick = offline, tmp_path / "usb"
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(os.urandom(3 * 1024 * 1024 + 123))  # several chunks
    dossiers = make_dossiers(30, seed=21)
    dossiers[0]["documents"] = [{"name": "Bản scan", "path": str(scan)}]
    ids = add(agent_dir, dossiers, tmp_path)
    assert agent_status(agent_dir)["pending"] == 30

    written = agent("export", "--data-dir", str(agent_dir), "--to", str(stick), lang="vi")
    assert "Đã xuất 30 bản ghi" in written.stdout
    [bundle] = sorted(stick.glob("*.csbundle"))
    assert f"Đang ghi lên USB: {bundle.name} xong, đã ghi 3." in written.stderr  # ~3 MiB
    assert bundle.name.startswith(agent_status(agent_dir)["agent_id"] + "-")
    assert agent_status(agent_dir)["pending"] == 30  # exporting acknowledges nothing

    first = syncd_import(server, stick)
    assert "30" in first.stdout and "0 refused" in first.stdout
    acks = acks_files(stick)
    assert len(acks) == 1
    stored = {d["id"]: d for d in server.dossiers()}
    assert sorted(stored) == sorted(ids)
    assert server_records(server) == 30
    [doc] = [d for d in stored[ids[0]]["documents"] if "sha256" in d]
    assert (server.data_dir / "documents" / doc["sha256"]).read_bytes() == scan.read_bytes()

    again = syncd_import(server, stick)  # the stick imported twice
    assert "acks unchanged" in again.stdout
    assert acks_files(stick) == acks  # byte for byte
    assert server_records(server) == 30 and len(server.dossiers()) == 30

    out = import_acks(agent_dir, stick).stdout
    assert "seq 30" in out and "1 documents complete" in out
    status = agent_status(agent_dir)
    assert status["pending"] == 0 and status["acked_seq"] == 30
    assert status["documents_pending"] == 0
    import_acks(agent_dir, stick)  # twice: nothing changes
    assert agent_status(agent_dir)["acked_seq"] == 30
    assert agent_status(agent_dir)["documents_pending"] == 0
    assert server.alerts() == []


def test_online_first_then_the_stick_is_exactly_once(server: Server, agent_dir: Path,
                                                     tmp_path: Path) -> None:
    stick = tmp_path / "usb"
    ids = add(agent_dir, make_dossiers(10, seed=22), tmp_path)
    export(agent_dir, stick)  # the officer leaves with the stick ...
    agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "60")  # ... the link comes back
    ids += add(agent_dir, make_dossiers(3, seed=23), tmp_path)
    agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "60")
    assert server_records(server) == 13

    syncd_import(server, stick)  # a replay of records 1-10: nothing changes
    assert server_records(server) == 13
    assert sorted(d["id"] for d in server.dossiers()) == sorted(ids)
    import_acks(agent_dir, stick)
    status = agent_status(agent_dir)
    assert status["pending"] == 0 and status["acked_seq"] == 13
    assert server.alerts() == []


def test_stick_first_then_online_is_exactly_once(server: Server, agent_dir: Path,
                                                 tmp_path: Path) -> None:
    stick = tmp_path / "usb"
    ids = add(agent_dir, make_dossiers(10, seed=24), tmp_path)
    export(agent_dir, stick)
    syncd_import(server, stick)
    ids += add(agent_dir, make_dossiers(4, seed=25), tmp_path)
    # The acks never came back; the link does: records 1-10 are resent and replayed.
    agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "60")
    assert server_records(server) == 14
    import_acks(agent_dir, stick)  # acks of records that already arrived online
    status = agent_status(agent_dir)
    assert status["pending"] == 0 and status["acked_seq"] == 14
    assert sorted(d["id"] for d in server.dossiers()) == sorted(ids)
    assert server.alerts() == []


def test_bundles_from_revoked_and_unknown_agents_are_refused_others_import(
        server: Server, agent_dir: Path, tmp_path: Path) -> None:
    stick = tmp_path / "usb"
    revoked = enroll_agent(server, tmp_path / "revoked", commune="01235")
    other = Server(tmp_path / "other-server").init().start()
    try:
        stranger = enroll_agent(other, tmp_path / "stranger", commune="01236")
    finally:
        other.stop()
    ids = add(agent_dir, make_dossiers(5, seed=26), tmp_path)
    for data_dir, seed in ((revoked, 27), (stranger, 28)):
        add(data_dir, make_dossiers(4, seed=seed), tmp_path)
        export(data_dir, stick)
    export(agent_dir, stick)
    revoked_id = agent_status(revoked)["agent_id"]
    stranger_id = agent_status(stranger)["agent_id"]
    syncd("revoke", "--data-dir", str(server.data_dir), revoked_id)

    result = syncd_import(server, stick, check=False)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    [revoked_line] = [line for line in lines if revoked_id in line]
    assert "revoked" in revoked_line and ".csbundle" in revoked_line
    assert "nothing stored" in revoked_line
    [unknown_line] = [line for line in lines if stranger_id in line]
    assert "unknown agent" in unknown_line and ".csbundle" in unknown_line
    assert "Traceback" not in result.stderr
    assert sorted(d["id"] for d in server.dossiers()) == sorted(ids)
    assert server_records(server) == 5
    assert len(acks_files(stick)) == 1  # only the enrolled agent's bundle is answered
    import_acks(agent_dir, stick)
    assert agent_status(agent_dir)["pending"] == 0
    assert import_acks(revoked, stick, check=False).returncode != 0  # only its refusal
    assert agent_status(revoked)["pending"] == 4


def test_tampered_bundle_is_refused_and_nothing_stored(offline: Server, agent_dir: Path,
                                                       tmp_path: Path) -> None:
    server, stick = offline, tmp_path / "usb"
    add(agent_dir, make_dossiers(1500, seed=29), tmp_path)  # two batches
    export(agent_dir, stick)
    [path] = sorted(stick.glob("*.csbundle"))
    bundle = decode_bundle(path.read_bytes())
    assert len(bundle.items) == 2
    body = bytearray(bundle.items[1].body)
    body[len(body) // 2] ^= 0x01  # inside the signed, sealed batch
    items = (bundle.items[0], BundleItem(bundle.items[1].path, bytes(body)))
    path.write_bytes(encode_bundle(Bundle(bundle.agent_id, items)))

    result = syncd_import(server, stick, check=False)
    assert result.returncode == 1
    assert path.name in result.stderr and bundle.agent_id in result.stderr
    assert "item 2" in result.stderr and "Traceback" not in result.stderr
    assert server_records(server) == 0  # not even the intact first batch
    assert acks_files(stick) == {}


def test_tampered_acks_are_not_believed(offline: Server, agent_dir: Path,
                                        tmp_path: Path) -> None:
    server, stick = offline, tmp_path / "usb"
    add(agent_dir, make_dossiers(3, seed=30), tmp_path)
    export(agent_dir, stick)
    syncd_import(server, stick)
    [path] = sorted(stick.glob("*.csacks"))
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    path.write_bytes(bytes(data))
    result = import_acks(agent_dir, stick, check=False)
    assert result.returncode != 0 and path.name in result.stderr
    assert agent_status(agent_dir)["pending"] == 3
