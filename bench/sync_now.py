"""Time a `sync-agent sync-now` of N dossiers to a local syncd on loopback.

    .venv/bin/python bench/sync_now.py [N] [--daemon]

With ``--daemon`` a `sync-agent run` daemon is running: `sync-now` asks it and
follows its progress instead of sending by itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.dossiers import make_dossiers
from tests.support.procs import (
    AGENT,
    Server,
    agent,
    agent_status,
    cli_env,
    enroll_agent,
    wait_until,
)


def main() -> None:
    numbers = [a for a in sys.argv[1:] if a.isdigit()]
    count = int(numbers[0]) if numbers else 1000
    with_daemon = "--daemon" in sys.argv[1:]
    daemon = None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = Server(root / "server").init().start()
        try:
            agent_dir = enroll_agent(server, root / "agent")
            if with_daemon:
                daemon = subprocess.Popen([AGENT, "run", "--data-dir", str(agent_dir),
                                           "--ui-port", "0"], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, env=cli_env())
                wait_until(lambda: (agent_dir / "daemon.json").exists(), what="the daemon")
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
            if daemon is not None:
                daemon.terminate()
                daemon.wait(timeout=30)
            server.stop()
    print(f"dossiers: {count}  held by server: {held}  acked_seq: {status['acked_seq']}"
          f"  sent by: {'the daemon, followed by sync-now' if with_daemon else 'sync-now'}")
    print(f"add (one transaction, one process): {added - started:.2f} s")
    print(f"sync-now (process start to exit):   {synced - added:.2f} s")
    print(f"throughput: {count / (synced - added):.0f} dossiers/s")


if __name__ == "__main__":
    main()
