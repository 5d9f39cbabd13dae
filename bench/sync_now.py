"""Time a `sync-agent sync-now` of N dossiers to a local syncd on loopback.

    .venv/bin/python bench/sync_now.py [N]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.dossiers import make_dossiers
from tests.support.procs import Server, agent, agent_status, enroll_agent


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = Server(root / "server").init().start()
        try:
            agent_dir = enroll_agent(server, root / "agent")
            source = root / "dossiers.json"
            source.write_text(json.dumps(make_dossiers(count, seed=1), ensure_ascii=False))
            started = time.perf_counter()
            agent("add", "--data-dir", str(agent_dir), str(source))
            added = time.perf_counter()
            agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "300")
            synced = time.perf_counter()
            held = len(server.dossiers())
            status = agent_status(agent_dir)
        finally:
            server.stop()
    print(f"dossiers: {count}  held by server: {held}  acked_seq: {status['acked_seq']}")
    print(f"add (one transaction, one process): {added - started:.2f} s")
    print(f"sync-now (process start to exit):   {synced - added:.2f} s")
    print(f"throughput: {count / (synced - added):.0f} dossiers/s")


if __name__ == "__main__":
    main()
