"""End to end through real processes: add, sync-now, what the server holds."""

from __future__ import annotations

import json
import sqlite3
import unicodedata
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.config import AgentConfig, AgentPaths
from protocol import MEDIA_TYPE, BatchBody, DossierCreated, SealTo, StatusChanged, encode_event
from protocol.batches import encode_batch_body
from protocol.messages import decode_ack, decode_error, encode_envelope
from protocol.sealing import open_reply
from protocol.signing import sign_envelope
from tests.support.dossiers import make_dossiers
from tests.support.procs import Server, agent, agent_status, enroll_agent, syncd
from tests.support.proxy import LossyProxy


def add(agent_dir: Path, dossiers: list[dict[str, Any]], tmp_path: Path) -> list[str]:
    path = tmp_path / "input.json"
    path.write_text(json.dumps(dossiers, ensure_ascii=False), encoding="utf-8")
    out = agent("add", "--data-dir", str(agent_dir), str(path)).stdout
    return out.split()


def assert_same_fields(sent: dict[str, Any], stored: dict[str, Any]) -> None:
    for key, value in sent.items():
        if key == "applicant":
            for sub, sub_value in value.items():
                assert stored["applicant"][sub] == sub_value, (key, sub)
        else:
            assert stored[key] == value, key


def test_n_dossiers_reach_the_server_exactly_once_field_for_field(
        server: Server, agent_dir: Path, tmp_path: Path) -> None:
    dossiers = make_dossiers(300, seed=7)
    ids = add(agent_dir, dossiers, tmp_path)
    assert len(ids) == len(set(ids)) == 300

    result = agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "60")
    assert result.returncode == 0

    stored = {d["id"]: d for d in server.dossiers()}
    assert len(stored) == 300
    for dossier_id, sent in zip(ids, dossiers, strict=True):
        assert_same_fields(sent, stored[dossier_id])
        assert stored[dossier_id]["status"] == "received"
        assert stored[dossier_id]["commune_code"] == "01234"
    assert len({d["code"] for d in stored.values()}) == 300
    status = agent_status(agent_dir)
    assert status["pending"] == 0 and status["acked_seq"] == status["last_seq"] == 300
    assert status["last_error"] is None and status["last_success"] is not None
    [row] = server.agents()
    assert row["acked_seq"] == 300 and row["epoch"] == status["epoch"]


def test_status_updates_sync_and_names_are_nfc(server: Server, agent_dir: Path,
                                               tmp_path: Path) -> None:
    [dossier] = make_dossiers(1, seed=3)
    dossier["applicant"]["name"] = unicodedata.normalize("NFD", "Nguyễn Thị Hoà")
    [dossier_id] = add(agent_dir, [dossier], tmp_path)
    agent("update", "--data-dir", str(agent_dir), dossier_id, "--status", "processing",
          "--note", "chuyển phòng tư pháp")
    agent("update", "--data-dir", str(agent_dir), dossier_id, "--status", "finished")
    agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "30")
    [stored] = server.dossiers()
    assert stored["status"] == "finished"
    assert stored["applicant"]["name"] == unicodedata.normalize("NFC", "Nguyễn Thị Hoà")


def test_lost_acks_change_nothing_on_retry(server: Server, tmp_path: Path) -> None:
    with LossyProxy(server.port) as proxy:
        agent_dir = enroll_agent(server, tmp_path / "agent", server_url=proxy.url)
        dossiers = make_dossiers(40, seed=11)
        ids = add(agent_dir, dossiers, tmp_path)
        proxy.drop_next(3)
        result = agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "60")
        assert result.returncode == 0, result.stderr
        assert proxy.dropped == 3
    stored = {d["id"]: d for d in server.dossiers()}
    assert sorted(stored) == sorted(ids)
    with sqlite3.connect(server.data_dir / "syncd.db") as db:
        assert db.execute("SELECT count(*) FROM records").fetchone()[0] == 40
    assert server.alerts() == []
    assert agent_status(agent_dir)["acked_seq"] == 40


def test_altered_queue_row_fails_verify_and_is_never_sent(server: Server, agent_dir: Path,
                                                          tmp_path: Path) -> None:
    add(agent_dir, make_dossiers(5, seed=5), tmp_path)
    with sqlite3.connect(agent_dir / "queue.db") as db:
        [ciphertext] = db.execute("SELECT ciphertext FROM records WHERE seq = 3").fetchone()
        altered = bytes([ciphertext[0] ^ 0x01]) + ciphertext[1:]
        db.execute("UPDATE records SET ciphertext = ? WHERE seq = 3", (altered,))

    verify = agent("verify", "--data-dir", str(agent_dir), check=False)
    assert verify.returncode != 0
    assert "seq 3" in verify.stderr and "Traceback" not in verify.stderr

    sync = agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "20", check=False)
    assert sync.returncode != 0
    assert "seq 3" in sync.stderr
    assert len(server.dossiers()) == 2  # records 1 and 2 only
    assert agent_status(agent_dir)["acked_seq"] == 2


def _post_batch(server: Server, agent_dir: Path, body: BatchBody,
                claim_agent: str | None = None, claim_commune: str | None = None,
                ) -> tuple[int, bytes]:
    """POST a batch built by hand with this agent's keys; return (status, opened reply)."""
    config = AgentConfig.load(AgentPaths(agent_dir))
    key = Ed25519PrivateKey.from_private_bytes((agent_dir / "agent.key").read_bytes())
    seal = config.seal_to()
    seal = SealTo(claim_agent or seal.agent_id, claim_commune or seal.commune_code, seal.key_id,
                  seal.public_key)
    env = sign_envelope(key, "batch", claim_agent or config.agent_id,
                        encode_batch_body(body, seal))
    request = urllib.request.Request(server.url + "/v1/batches", data=encode_envelope(env),
                                     headers={"Content-Type": MEDIA_TYPE}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            status, data = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, data = exc.code, exc.read()
    return status, open_reply(data, config.server_key_bytes)


def test_same_seq_with_other_content_is_refused_and_raised(server: Server, agent_dir: Path,
                                                           tmp_path: Path) -> None:
    ids = add(agent_dir, make_dossiers(3, seed=9), tmp_path)
    agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "30")
    before = {d["id"]: d for d in server.dossiers()}

    other = StatusChanged(ids[0], "withdrawn", "2026-11-26T10:00:00+07:00", "x", None)
    status, reply = _post_batch(server, agent_dir, BatchBody(1, 2, (encode_event(other),)))
    assert status == 200
    ack = decode_ack(reply)
    assert ack.acked_seq == 3
    assert [(v.seq, v.code) for v in ack.verdicts] == [(2, "conflict")]

    # The same conflicting batch again: same answer, one alert only.
    status, reply = _post_batch(server, agent_dir, BatchBody(1, 2, (encode_event(other),)))
    assert decode_ack(reply).verdicts == ack.verdicts
    alerts = server.alerts()
    assert [(a["kind"], a["seq"]) for a in alerts] == [("conflict", 2)]
    assert {d["id"]: d for d in server.dossiers()} == before


def test_gap_is_refused_with_the_server_position(server: Server, agent_dir: Path,
                                                 tmp_path: Path) -> None:
    [dossier] = make_dossiers(1, seed=4)
    dossier.update(id="0b6f1c52-4cb5-4ad6-9a57-3bd3a1c0b8a1", code="01234-261126-0099")
    record = encode_event(DossierCreated(dossier | {"status": "received"}))
    status, reply = _post_batch(server, agent_dir, BatchBody(1, 5, (record,)))
    assert status == 409
    err = decode_error(reply)
    assert (err.code, err.acked_seq) == ("gap", 0)
    assert server.dossiers() == []


def test_identity_comes_from_the_signature_not_the_body(server: Server, agent_dir: Path,
                                                       tmp_path: Path) -> None:
    other_dir = enroll_agent(server, tmp_path / "other", commune="05678")
    other_id = json.loads((other_dir / "agent.json").read_text())["agent_id"]
    [dossier] = make_dossiers(1, seed=4)
    dossier.update(id="0b6f1c52-4cb5-4ad6-9a57-3bd3a1c0b8a1", code="05678-261126-0001")
    record = encode_event(DossierCreated(dossier | {"status": "received"}))
    status, reply = _post_batch(server, agent_dir, BatchBody(1, 1, (record,)),
                                claim_agent=other_id)
    assert status == 401
    assert decode_error(reply).code == "bad_signature"
    assert server.dossiers() == []


def test_invalid_dossiers_are_reported_per_field_and_nothing_is_added(
        server: Server, agent_dir: Path, tmp_path: Path) -> None:
    good, bad = make_dossiers(2, seed=2)
    bad["applicant"]["id_number"] = "12345"
    bad["received_at"] = "hôm nay"
    bad["colour"] = "red"
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([good, bad], ensure_ascii=False), encoding="utf-8")
    result = agent("add", "--data-dir", str(agent_dir), str(path), check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    for field in ("applicant.id_number", "received_at", "colour"):
        assert field in result.stderr
    assert "Traceback" not in result.stderr
    assert agent_status(agent_dir)["last_seq"] == 0

    broken = agent("add", "--data-dir", str(agent_dir), "-", input="{not json", check=False)
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert agent_status(agent_dir)["last_seq"] == 0


def test_json_lines_and_stdin_are_accepted(server: Server, agent_dir: Path) -> None:
    lines = "\n".join(json.dumps(d, ensure_ascii=False) for d in make_dossiers(3, seed=8))
    result = agent("add", "--data-dir", str(agent_dir), "-", input=lines)
    assert len(result.stdout.split()) == 3


def test_vietnamese_messages_by_locale(server: Server, agent_dir: Path) -> None:
    result = agent("sync-now", "--data-dir", str(agent_dir), lang="vi")
    assert "không còn gì chờ gửi" in result.stdout
    english = agent("sync-now", "--data-dir", str(agent_dir), "--lang", "en", lang="vi")
    assert "nothing is waiting" in english.stdout


def test_unreachable_server_says_what_waits(tmp_path: Path, server: Server,
                                            agent_dir: Path) -> None:
    add(agent_dir, make_dossiers(2, seed=1), tmp_path)
    server.stop()
    result = agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "3", check=False)
    assert result.returncode == 3
    assert "2 records still waiting" in result.stderr
    assert "Traceback" not in result.stderr


def test_agent_data_directory_holds_no_plaintext(server: Server, agent_dir: Path,
                                                 tmp_path: Path) -> None:
    dossiers = make_dossiers(20, seed=21)
    add(agent_dir, dossiers, tmp_path)
    agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "30")
    markers = {d["applicant"]["name"].encode() for d in dossiers}
    markers |= {d["applicant"]["id_number"].encode() for d in dossiers}
    for path in agent_dir.iterdir():
        data = path.read_bytes()
        for marker in markers:
            assert marker not in data, (path.name, marker)
    assert (agent_dir / "queue.key").stat().st_mode & 0o077 == 0
    assert (agent_dir / "agent.key").stat().st_mode & 0o077 == 0


def test_each_sync_carries_a_heartbeat_and_the_server_records_the_clock_skew(
        server: Server, agent_dir: Path, tmp_path: Path, monkeypatch: Any) -> None:
    add(agent_dir, make_dossiers(3, seed=21), tmp_path)
    monkeypatch.setenv("SYNC_AGENT_CLOCK_OFFSET_S", "-7200")  # the PC is two hours behind
    agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "30")
    [row] = json.loads(syncd("agents", "--data-dir", str(server.data_dir), "--json").stdout)
    assert (row["acked_seq"], row["queue_depth"], row["quarantined"]) == (3, 0, 0)
    assert row["oldest_unsent_s"] is None  # nothing waits
    assert row["agent_version"].startswith("commune-sync")
    assert row["free_disk_bytes"] > 0
    assert -7200 - 120 < row["clock_skew_s"] < -7200 + 120
    assert row["heartbeat_at"] == row["last_seen"]
    # The skew is recorded, never trusted: the dossiers arrived all the same.
    assert len(server.dossiers()) == 3
