"""The demo: a local syncd on SQLite in a temporary folder, one enrolled demo
commune, a few Vietnamese dossiers recorded and synced, then what the server
holds. Run with `make demo`.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
SYNCD, AGENT = str(BIN / "syncd"), str(BIN / "sync-agent")
COMMUNE = "02647"  # a demo commune code

DOSSIERS = [
    {"procedure_code": "1.001193", "procedure_name": "Đăng ký khai sinh", "field": "Hộ tịch",
     "applicant": {"name": "Giàng Seo Páo", "id_type": "cccd", "id_number": "010090001234",
                   "phone": "0912345678", "address": "Thôn Sín Chải"},
     "summary": "Đăng ký khai sinh cho con Giàng Thị Mỷ",
     "received_at": "2026-11-26T08:15:00+07:00", "due_at": "2026-11-26T16:30:00+07:00",
     "documents": [{"name": "Giấy chứng sinh", "copies": 1}, {"name": "Tờ khai", "copies": 1}]},
    {"procedure_code": "2.000815", "procedure_name": "Chứng thực bản sao từ bản chính",
     "field": "Chứng thực", "applicant": {"name": "Lò Thị Hoa", "phone": "0987654321"},
     "received_at": "2026-11-26T08:40:00+07:00", "due_at": "2026-11-26T11:00:00+07:00",
     "fees": [{"name": "Phí chứng thực (3 trang)", "amount": 5000}],
     "documents": [{"name": "Sổ hộ khẩu (bản chính)", "copies": 1}]},
    {"procedure_code": "1.000894", "procedure_name": "Đăng ký kết hôn", "field": "Hộ tịch",
     "applicant": {"name": "Vàng A Dế", "id_type": "cccd", "id_number": "010095004321"},
     "received_at": "2026-11-26T09:05:00+07:00", "due_at": "2026-11-26T16:30:00+07:00",
     "documents": [{"name": "Tờ khai đăng ký kết hôn", "copies": 1}]},
    {"procedure_code": "1.011607", "procedure_name": "Công nhận hộ nghèo, hộ cận nghèo",
     "field": "Bảo trợ xã hội", "applicant": {"name": "Sùng Thị Sính", "address": "Bản Phố"},
     "received_at": "2026-11-26T09:30:00+07:00", "documents": [{"name": "Giấy đề nghị"}]},
]


def run(*cmd: str, stdin: str | None = None) -> str:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:2])} failed:\n{proc.stderr}")
    if proc.stderr.strip():
        print(proc.stderr.strip())
    return proc.stdout


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="commune-sync-demo-"))
    server_dir, agent_dir = root / "server", root / "agent"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    print(f"== Demo folder: {root}")
    run(SYNCD, "init", "--data-dir", str(server_dir))
    log = open(root / "syncd.log", "wb")  # noqa: SIM115 - kept open for the server's life
    server = subprocess.Popen([SYNCD, "serve", "--data-dir", str(server_dir), "--port", str(port)],
                              stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("syncd did not start; see " + str(root / "syncd.log"))
                time.sleep(0.1)
        print(f"== syncd running at {url}")
        token = run(SYNCD, "enroll", "--data-dir", str(server_dir), "--commune", COMMUNE,
                    "--name", "Bộ phận một cửa xã (demo)").strip()
        print(run(AGENT, "init", "--data-dir", str(agent_dir), "--server", url, "--token", token,
                  "--lang", "vi").strip())
        ids = run(AGENT, "add", "--data-dir", str(agent_dir), "-",
                  stdin=json.dumps(DOSSIERS, ensure_ascii=False)).split()
        print(f"== {len(ids)} hồ sơ đã lưu vào hàng đợi mã hoá / dossiers saved to the queue")
        run(AGENT, "update", "--data-dir", str(agent_dir), ids[1], "--status", "finished",
            "--note", "Đã chứng thực xong")
        print(run(AGENT, "sync-now", "--data-dir", str(agent_dir), "--lang", "vi").strip())
        print(run(AGENT, "verify", "--data-dir", str(agent_dir), "--lang", "vi").strip())
        print("== What the server holds / Máy chủ đang giữ:")
        for d in json.loads(run(SYNCD, "dossiers", "--data-dir", str(server_dir), "--json")):
            print(f"  {d['code']}  {d['procedure_code']}  {d['status']:<10} "
                  f"{d['applicant']['name']} — {d['procedure_name']}")
        print("== Agents:")
        print(run(SYNCD, "agents", "--data-dir", str(server_dir)).rstrip())
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        log.close()
    print(f"== Done. Data kept in {root} (delete it when finished).")


if __name__ == "__main__":
    main()
