"""Security properties through real processes: revocation, tokens, pinning,
captive portals, key custody, retention and key rotation."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import threading
from pathlib import Path

from tests.support.dossiers import make_dossiers
from tests.support.procs import AGENT, Server, agent, agent_status, syncd


def _add(agent_dir: Path, count: int, seed: int, tmp_path: Path) -> list[dict]:
    dossiers = make_dossiers(count, seed=seed)
    path = tmp_path / f"in-{seed}.json"
    path.write_text(json.dumps(dossiers, ensure_ascii=False), encoding="utf-8")
    agent("add", "--data-dir", str(agent_dir), str(path))
    return dossiers


def _agent_id(agent_dir: Path) -> str:
    return str(json.loads((agent_dir / "agent.json").read_text())["agent_id"])


def test_revoked_agent_is_told_and_nothing_it_sends_is_stored(
        server: Server, agent_dir: Path, tmp_path: Path) -> None:
    _add(agent_dir, 3, 1, tmp_path)
    agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "30")
    syncd("revoke", "--data-dir", str(server.data_dir), _agent_id(agent_dir))
    _add(agent_dir, 2, 2, tmp_path)
    result = agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "10", check=False)
    assert result.returncode == 3
    assert "revoked" in result.stderr and "Traceback" not in result.stderr
    vi = agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "10", check=False,
               lang="vi")
    assert "thu hồi" in vi.stderr
    assert len(server.dossiers()) == 3
    assert agent_status(agent_dir)["pending"] == 2
    [row] = server.agents()
    assert row["revoked"] is True and row["acked_seq"] == 3


def test_tokens_are_single_use_and_expire(server: Server, tmp_path: Path) -> None:
    token = server.enroll("01234")
    agent("init", "--data-dir", str(tmp_path / "a"), "--server", server.url, "--token", token)
    reused = agent("init", "--data-dir", str(tmp_path / "b"), "--server", server.url,
                   "--token", token, check=False)
    assert reused.returncode == 1 and "invalid_token" in reused.stderr
    expired = syncd("enroll", "--data-dir", str(server.data_dir), "--commune", "01234",
                    "--expires-hours", "0.0000001").stdout.strip()
    late = agent("init", "--data-dir", str(tmp_path / "c"), "--server", server.url,
                 "--token", expired, check=False)
    assert late.returncode == 1 and "invalid_token" in late.stderr
    assert len(server.agents()) == 1
    bogus = agent("init", "--data-dir", str(tmp_path / "d"), "--server", server.url,
                  "--token", "not-a-token", check=False)
    assert bogus.returncode == 2 and "Traceback" not in bogus.stderr


def test_a_token_pins_the_server_key(server: Server, tmp_path: Path) -> None:
    other = Server(tmp_path / "impostor").init().start()
    try:
        token = server.enroll("01234")  # names the real server's key
        # The impostor would need this token's hash; give it the same token by copying
        # the real server's database, but not its keys.
        other.stop()
        with sqlite3.connect(server.data_dir / "syncd.db") as src, \
                sqlite3.connect(other.data_dir / "syncd.db") as dst:
            src.backup(dst)
        other.start()
        result = agent("init", "--data-dir", str(tmp_path / "a"), "--server", other.url,
                       "--token", token, check=False)
    finally:
        other.stop()
    assert result.returncode == 1
    assert "does not match" in result.stderr
    assert not (tmp_path / "a" / "agent.json").exists()


class _CaptivePortal:
    """Answers every request with 200 OK and an HTML page, like a hotel login page."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        page = b"<html><body>Please log in to continue</body></html>"
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    self.requests += 1
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                                 b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(page)
                                 + page)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()
        self._thread.join(5)


def test_captive_portal_never_counts_as_an_ack(server: Server, agent_dir: Path,
                                               tmp_path: Path) -> None:
    _add(agent_dir, 4, 3, tmp_path)
    portal = _CaptivePortal()
    try:
        config_path = agent_dir / "agent.json"
        config = json.loads(config_path.read_text())
        config["server_url"] = f"http://127.0.0.1:{portal.port}"
        config_path.write_text(json.dumps(config))
        result = agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "4", check=False)
    finally:
        portal.close()
    assert portal.requests >= 1
    assert result.returncode == 3
    assert "could not be reached properly" in result.stderr or "valid signed answer" in \
        result.stderr
    status = agent_status(agent_dir)
    assert status["acked_seq"] == 0 and status["pending"] == 4


def test_world_readable_key_file_is_refused(server: Server, agent_dir: Path) -> None:
    os.chmod(agent_dir / "queue.key", 0o644)
    result = agent("status", "--data-dir", str(agent_dir), check=False)
    assert result.returncode == 1
    assert "readable by other users" in result.stderr and "chmod 600" in result.stderr
    os.chmod(agent_dir / "queue.key", 0o600)
    assert agent("status", "--data-dir", str(agent_dir)).returncode == 0


def test_a_copy_without_the_key_holds_no_dossier_text(server: Server, agent_dir: Path,
                                                      tmp_path: Path) -> None:
    scan = tmp_path / "giay-khai-sinh.txt"
    scan.write_text("Giấy chứng sinh của Giàng Thị Mỷ, con của Giàng Seo Páo", encoding="utf-8")
    [dossier] = make_dossiers(1, seed=4)
    dossier["applicant"]["name"] = "Giàng Seo Páo"
    dossier["documents"] = [{"name": "Giấy chứng sinh", "path": str(scan)}]
    agent("add", "--data-dir", str(agent_dir), "-", input=json.dumps(dossier, ensure_ascii=False))
    stolen = tmp_path / "stolen"
    shutil.copytree(agent_dir, stolen, ignore=shutil.ignore_patterns("queue.key", "agent.key"))
    needles = ["Giàng Seo Páo".encode(), "Giàng Thị Mỷ".encode(),
               dossier["applicant"]["id_number"].encode(), dossier["applicant"]["phone"].encode()]
    for path in stolen.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in needles:
                assert needle not in data, (path.name, needle)
    result = agent("verify", "--data-dir", str(stolen), check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr


def test_retention_erases_acknowledged_plaintext(server: Server, agent_dir: Path,
                                                 tmp_path: Path) -> None:
    config_path = agent_dir / "agent.json"
    config = json.loads(config_path.read_text())
    config["retention_days"] = 0
    config_path.write_text(json.dumps(config))
    _add(agent_dir, 5, 5, tmp_path)
    agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "30")
    with sqlite3.connect(agent_dir / "queue.db") as db:
        sizes = [row[0] for row in db.execute("SELECT length(ciphertext) FROM records")]
    assert sizes == [0] * 5
    assert agent("verify", "--data-dir", str(agent_dir)).returncode == 0
    # Records not yet acknowledged are never erased.
    _add(agent_dir, 2, 6, tmp_path)
    with sqlite3.connect(agent_dir / "queue.db") as db:
        sizes = [row[0] for row in db.execute("SELECT length(ciphertext) FROM records "
                                              "ORDER BY seq")]
    assert sizes[:5] == [0] * 5 and all(size > 0 for size in sizes[5:])
    assert len(server.dossiers()) == 5


def test_agent_and_server_keys_rotate_without_losing_anything(
        server: Server, agent_dir: Path, tmp_path: Path) -> None:
    _add(agent_dir, 3, 7, tmp_path)
    agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "30")
    old_key = (agent_dir / "agent.key").read_bytes()
    agent("rotate-key", "--data-dir", str(agent_dir))
    assert (agent_dir / "agent.key").read_bytes() != old_key
    _add(agent_dir, 2, 8, tmp_path)
    agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "30")
    # The server's sealing key rotates; the agent learns it from a signed ack and
    # batches sealed to the old key still open.
    syncd("rotate-key", "--data-dir", str(server.data_dir))
    server.stop()
    server.start()
    _add(agent_dir, 2, 9, tmp_path)
    agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "30")
    assert json.loads((agent_dir / "agent.json").read_text())["sealing_key_id"] == 2
    _add(agent_dir, 2, 10, tmp_path)
    agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "30")
    assert len(server.dossiers()) == 9
    assert (server.data_dir / "sealing-1.key").exists()


def test_a_passphrase_protects_the_queue_key(server: Server, tmp_path: Path) -> None:
    env = dict(os.environ, SYNC_AGENT_PASSPHRASE="núi cao 2026")
    agent_dir = tmp_path / "agent"
    token = server.enroll("01234")
    subprocess.run([AGENT, "init", "--data-dir", str(agent_dir), "--server", server.url,
                    "--token", token], env=env, check=True, capture_output=True)
    assert (agent_dir / "queue.key").stat().st_size != 32  # wrapped, not the raw key
    [dossier] = make_dossiers(1, seed=11)
    added = subprocess.run([AGENT, "add", "--data-dir", str(agent_dir), "-"], env=env,
                           input=json.dumps(dossier), capture_output=True, text=True)
    assert added.returncode == 0
    without = agent("status", "--data-dir", str(agent_dir), check=False)
    assert without.returncode == 1 and "SYNC_AGENT_PASSPHRASE" in without.stderr
    wrong = subprocess.run([AGENT, "status", "--data-dir", str(agent_dir)], capture_output=True,
                           text=True, env=dict(env, SYNC_AGENT_PASSPHRASE="sai"))
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr
    synced = subprocess.run([AGENT, "sync-now", "--data-dir", str(agent_dir)], env=env,
                            capture_output=True, text=True)
    assert synced.returncode == 0, synced.stderr
    assert len(server.dossiers()) == 1
