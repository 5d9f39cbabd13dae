"""Push realistic dossiers through emulated 2G/EDGE/3G links and print the byte budget.

    .venv/bin/python bench/link.py                 # every profile, 1,000 dossiers
    .venv/bin/python bench/link.py --profiles 2g --dossiers 1000 --baseline 50

For each profile: uplink and downlink bytes per dossier with all protocol and
HTTP overhead (TCP/IP headers are not counted by the emulator), drain time,
the ratio to the link limit (uplink bytes ÷ uplink rate) and to the floor (the
same dossiers as one zstd-19 msgpack blob), and the one-POST-per-dossier JSON
baseline (the OpenRosa/ODK pattern) through the same link in the same run,
measured on a sample and extrapolated. Then a 5 MB document through EDGE
with outages, and the CPU cost of batching 10,000 dossiers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import zstandard
from aiohttp import ClientSession, web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol import BatchBody, DossierCreated, SealTo, encode_event, validate_dossier
from protocol.batches import encode_batch_body
from protocol.events import derive_dossier_id
from tests.support.dossiers import make_dossiers
from tests.support.link import PROFILES, LinkProfile, ThreadedLink
from tests.support.procs import Server, agent, agent_status, enroll_agent


def floor_bytes(dossiers: list[dict[str, Any]]) -> int:
    return len(zstandard.ZstdCompressor(level=19).compress(msgpack.packb(dossiers)))


def run_profile(root: Path, profile: LinkProfile, count: int, seed: int) -> dict[str, Any]:
    dossiers = make_dossiers(count, seed=seed)
    server = Server(root / f"server-{profile.name}").init().start()
    try:
        with ThreadedLink("127.0.0.1", server.port, profile, seed=seed) as link:
            agent_dir = enroll_agent(server, root / f"agent-{profile.name}",
                                     server_url=link.url)
            source = root / f"dossiers-{profile.name}.json"
            source.write_text(json.dumps(dossiers, ensure_ascii=False), encoding="utf-8")
            agent("add", "--data-dir", str(agent_dir), str(source))
            link.reset_counters()
            started = time.monotonic()
            agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "3600",
                  timeout_s=3700)
            drain_s = time.monotonic() - started
            stats = link.stats()
        held = server.dossiers()
        status = agent_status(agent_dir)
    finally:
        server.stop()
    assert len(held) == count == len({d["id"] for d in held}), "not exactly once"
    assert status["pending"] == 0 and status["acked_seq"] == count
    return {"profile": profile.name, "dossiers": count, "up": stats.bytes_up,
            "down": stats.bytes_down, "drain_s": drain_s, "outages": stats.outages,
            "floor": floor_bytes(dossiers),
            "limit_s": stats.bytes_up * 8 / profile.up_bps if profile.up_bps else 0.0}


class _Baseline:
    """A JSON endpoint taking one dossier per POST (as ODK/OpenRosa servers do)."""

    def __init__(self) -> None:
        self.received = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _submit(self, request: web.Request) -> web.Response:
        json.loads(await request.read())
        self.received += 1
        return web.json_response({"status": "received"}, status=201)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/submission", self._submit)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def __enter__(self) -> _Baseline:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def _post_each(url: str, dossiers: list[dict[str, Any]]) -> None:
    async with ClientSession() as session:
        for dossier in dossiers:
            body = json.dumps(dossier, ensure_ascii=False).encode()
            async with session.post(url + "/submission", data=body,
                                    headers={"Content-Type": "application/json"}) as resp:
                await resp.read()


def run_baseline(profile: LinkProfile, sample: int, seed: int) -> dict[str, Any]:
    dossiers = make_dossiers(sample, seed=seed)
    with _Baseline() as server, ThreadedLink("127.0.0.1", server.port, profile) as link:
        started = time.monotonic()
        asyncio.run(_post_each(link.url, dossiers))
        elapsed = time.monotonic() - started
        stats = link.stats()
    assert server.received == sample
    return {"up": stats.bytes_up / sample, "down": stats.bytes_down / sample,
            "s_per_dossier": elapsed / sample}


def run_document(root: Path, profile: LinkProfile, megabytes: float, seed: int
                 ) -> dict[str, Any]:
    size = int(megabytes * 1024 * 1024)
    scan = root / "scan.pdf"
    scan.write_bytes(os.urandom(size))
    [dossier] = make_dossiers(1, seed=seed)
    dossier["documents"] = [{"name": "Bản quét hồ sơ", "path": str(scan)}]
    server = Server(root / "server-document").init().start()
    try:
        with ThreadedLink("127.0.0.1", server.port, profile, seed=seed) as link:
            agent_dir = enroll_agent(server, root / "agent-document", server_url=link.url)
            agent("add", "--data-dir", str(agent_dir), "-",
                  input=json.dumps(dossier, ensure_ascii=False))
            link.reset_counters()
            started = time.monotonic()
            agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "7200",
                  timeout_s=7300)
            drain_s = time.monotonic() - started
            stats = link.stats()
        [held] = server.dossiers()
    finally:
        server.stop()
    assert held["documents"][0]["complete"] and held["documents"][0]["size"] == size
    return {"size": size, "up": stats.bytes_up, "drain_s": drain_s, "outages": stats.outages,
            "limit_s": stats.bytes_up * 8 / (profile.up_bps or 1)}


def cpu_figures(count: int = 10_000) -> dict[int, float]:
    records = []
    for seq, raw in enumerate(make_dossiers(count, seed=77), start=1):
        dossier = validate_dossier(raw)
        dossier["code"] = f"02647-261126-{seq % 10000:04d}"
        dossier["id"] = derive_dossier_id("ag-bench", 1, seq)
        records.append(dossier)
    sealing = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    seal = SealTo("ag-bench", "02647", 1, sealing)
    out = {}
    for level in (19, 12, 6):
        started = time.process_time()
        encoded = [encode_event(DossierCreated(d, derived_id=True)) for d in records]
        for first in range(0, count, 500):
            encode_batch_body(BatchBody(1, first + 1, tuple(encoded[first:first + 500])),
                              seal, level=level)
        out[level] = time.process_time() - started
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="2g,2g-outages,edge,edge-outages,3g,3g-outages")
    parser.add_argument("--dossiers", type=int, default=1000)
    parser.add_argument("--baseline", type=int, default=40,
                        help="dossiers in the one-POST-per-dossier sample (extrapolated)")
    parser.add_argument("--document-mb", type=float, default=5.0, help="0 to skip")
    parser.add_argument("--document-profile", default="edge-outages")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"{'profile':<14}{'N':>6}{'up B/d':>9}{'down B/d':>10}{'drain s':>9}"
          f"{'limit s':>9}{'up/floor':>10}{'outages':>9}   baseline (1 POST/dossier)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in args.profiles.split(","):
            profile = PROFILES[name]
            r = run_profile(root, profile, args.dossiers, args.seed)
            line = (f"{r['profile']:<14}{r['dossiers']:>6}{r['up'] / r['dossiers']:>9.1f}"
                    f"{r['down'] / r['dossiers']:>10.1f}{r['drain_s']:>9.1f}"
                    f"{r['limit_s']:>9.1f}{r['up'] / r['floor']:>10.2f}{r['outages']:>9}")
            if not profile.has_outages and args.baseline:
                b = run_baseline(profile, args.baseline, args.seed)
                line += (f"   {b['up']:.0f} B up, {b['down']:.0f} B down /dossier; "
                         f"{b['s_per_dossier'] * args.dossiers:.0f} s for {args.dossiers}")
            print(line, flush=True)
            print(f"{'':<14}floor: {r['floor'] / r['dossiers']:.1f} B/dossier "
                  f"(zstd-19 of the same dossiers as one msgpack blob)", flush=True)
        if args.document_mb:
            profile = PROFILES[args.document_profile]
            d = run_document(root, profile, args.document_mb, args.seed)
            extra = d["up"] - d["size"]
            print(f"document {d['size']} B through {profile.name}: uplink {d['up']} B "
                  f"({extra / d['size']:.1%} over the file, all overhead and resends included),"
                  f" {d['drain_s']:.0f} s (link limit {d['limit_s']:.0f} s), "
                  f"{d['outages']} outages", flush=True)
    cpu = cpu_figures()
    print("CPU to encode and batch 10,000 dossiers (batches of 500): " +
          ", ".join(f"zstd level {level}: {seconds:.2f} s" for level, seconds in cpu.items()))


if __name__ == "__main__":
    main()
