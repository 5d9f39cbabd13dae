"""Real processes for tests: a `syncd serve` on loopback and the CLIs.

Everything here waits on conditions with deadlines, never on fixed sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
SYNCD = str(BIN / "syncd")
AGENT = str(BIN / "sync-agent")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], *, timeout_s: float = 20.0, what: str = "condition",
               interval_s: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def cli_env(lang: str = "en") -> dict[str, str]:
    env = dict(os.environ)
    env["LANG"] = "en_US.UTF-8" if lang == "en" else "vi_VN.UTF-8"
    env.pop("LC_ALL", None)
    env.pop("LC_MESSAGES", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(cmd: list[str], *, input: str | None = None, timeout_s: float = 120.0,
        check: bool = True, lang: str = "en") -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout_s,
                          env=cli_env(lang))
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\nstdout: {proc.stdout}\n"
                             f"stderr: {proc.stderr}")
    return proc


def communicate_within(proc: subprocess.Popen[str], timeout_s: float) -> tuple[int, str, str]:
    """Wait for ``proc`` to exit by itself; its exit code, stdout and stderr."""
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args!r} still running after {timeout_s} s\n"
                             f"stdout: {out}\nstderr: {err}") from None
    return proc.returncode, out or "", err or ""


def syncd(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return run([SYNCD, *args], **kw)


def agent(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return run([AGENT, *args], **kw)


class Server:
    """A `syncd serve` subprocess on a fixed loopback port (restartable)."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{data_dir.name}-serve.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def init(self) -> Server:
        syncd("init", "--data-dir", str(self.data_dir))
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def start(self) -> Server:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [SYNCD, "serve", "--data-dir", str(self.data_dir), "--port", str(self.port)],
                stdout=log, stderr=log, env=cli_env())
        wait_until(lambda: self.healthy() or self.proc.poll() is not None,  # type: ignore[union-attr]
                   what="syncd to answer /healthz")
        if self.proc.poll() is not None:
            raise AssertionError(f"syncd exited: {self.log.read_text()}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def enroll(self, commune: str = "01234", name: str | None = None) -> str:
        args = ["enroll", "--data-dir", str(self.data_dir), "--commune", commune]
        if name:
            args += ["--name", name]
        return syncd(*args).stdout.strip()

    def dossiers(self, commune: str | None = None) -> list[dict[str, Any]]:
        args = ["dossiers", "--data-dir", str(self.data_dir), "--json"]
        if commune:
            args += ["--commune", commune]
        return list(json.loads(syncd(*args).stdout))

    def agents(self) -> list[dict[str, Any]]:
        return list(json.loads(syncd("agents", "--data-dir", str(self.data_dir), "--json").stdout))

    def alerts(self) -> list[dict[str, Any]]:
        return list(json.loads(syncd("alerts", "--data-dir", str(self.data_dir), "--json").stdout))


def enroll_agent(server: Server, data_dir: Path, commune: str = "01234",
                 server_url: str | None = None) -> Path:
    token = server.enroll(commune)
    agent("init", "--data-dir", str(data_dir), "--server", server_url or server.url,
          "--token", token)
    return data_dir


def agent_status(data_dir: Path) -> dict[str, Any]:
    return dict(json.loads(agent("status", "--data-dir", str(data_dir), "--json").stdout))
